#!/usr/bin/env python3
"""Score a selfheal model.onnx with onnxruntime: the peer the Rust scorer is checked against.

Used by the Rust tests (agent scoring equivalence) and benches (benches/score.rs):

  onnx_score.py score MODEL.onnx ROWS.f32 N_FEATURES OUT.f32
      Reads little-endian float32 rows (row-major, N_FEATURES per row), writes one float32
      score per row.

  onnx_score.py bench MODEL.onnx ROWS.f32 N_FEATURES [SKLEARN_TREES SKLEARN_MAX_SAMPLES]
      Times onnxruntime single-row and 10,000-row batch scoring of MODEL.onnx on ROWS, and
      scikit-learn IsolationForest.score_samples (a forest of the same size fitted on ROWS),
      and prints one JSON object of timings.

Both runtimes run with one intra-op thread, to compare with the one-core Rust numbers.
"""

import json
import sys
import time

import numpy as np
import onnxruntime as ort


def session(model_path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])


def read_rows(path, n_features):
    rows = np.fromfile(path, dtype="<f4")
    if rows.size % n_features != 0:
        sys.exit(f"{path}: {rows.size} floats is not a multiple of {n_features}")
    return rows.reshape(-1, n_features)


def score(model_path, rows_path, n_features, out_path):
    rows = read_rows(rows_path, n_features)
    sess = session(model_path)
    (out,) = sess.run(["score"], {"features": rows})
    out.astype("<f4").reshape(-1).tofile(out_path)


def per_call_seconds(fn, min_seconds=1.0, max_calls=100_000):
    fn()  # warm up
    calls = 0
    start = time.perf_counter()
    while calls < max_calls:
        fn()
        calls += 1
        if time.perf_counter() - start >= min_seconds:
            break
    return (time.perf_counter() - start) / calls


def bench(model_path, rows_path, n_features, trees, max_samples):
    rows = read_rows(rows_path, n_features)
    one = rows[:1]
    batch = rows[:10_000]
    result = {"rows": int(rows.shape[0]), "n_features": n_features}

    start = time.perf_counter()
    sess = session(model_path)
    result["ort_load_s"] = time.perf_counter() - start
    result["ort_single_row_s"] = per_call_seconds(
        lambda: sess.run(["score"], {"features": one})
    )
    result["ort_batch_10000_s"] = per_call_seconds(
        lambda: sess.run(["score"], {"features": batch}), max_calls=200
    )

    from sklearn.ensemble import IsolationForest

    forest = IsolationForest(
        n_estimators=trees, max_samples=max_samples, random_state=0, n_jobs=1
    ).fit(rows)
    result["sklearn_single_row_s"] = per_call_seconds(
        lambda: forest.score_samples(one), max_calls=2_000
    )
    result["sklearn_batch_10000_s"] = per_call_seconds(
        lambda: forest.score_samples(batch), max_calls=50
    )
    result["versions"] = {
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "scikit-learn": __import__("sklearn").__version__,
    }
    print(json.dumps(result))


def main(argv):
    if len(argv) == 6 and argv[1] == "score":
        score(argv[2], argv[3], int(argv[4]), argv[5])
    elif len(argv) in (5, 7) and argv[1] == "bench":
        trees, max_samples = (int(argv[5]), int(argv[6])) if len(argv) == 7 else (100, 256)
        bench(argv[2], argv[3], int(argv[4]), trees, max_samples)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
