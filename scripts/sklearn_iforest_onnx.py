#!/usr/bin/env python3
"""Export a stock scikit-learn IsolationForest with skl2onnx and score it: the peer the Rust
test of the agent's ONNX kernels (TreeEnsembleRegressor, LabelEncoder) checks tract against.

  sklearn_iforest_onnx.py OUT_DIR
  sklearn_iforest_onnx.py bench OUT_DIR
      The same, then times onnxruntime single-row calls of model.onnx (one intra-op thread,
      rows cycling through rows.f32, ~2 s) and prints {"ort_single_row_s": ...} as JSON.

Trains IsolationForest(n_estimators=100, max_samples=256, random_state=0) on synthetic data
(seeded, 6 features), exports it unchanged with skl2onnx, and writes into OUT_DIR:

  model.onnx             the stock export (outputs `label` int64 [N, 1], `scores` f32 [N, 1])
  rows.f32               test rows, little-endian float32, row-major
  ort_label.i64          onnxruntime's `label` per row, little-endian int64
  ort_scores.f32         onnxruntime's `scores` per row
  sklearn_predict.i64    IsolationForest.predict (float64 arithmetic)
  sklearn_decision.f32   IsolationForest.decision_function
  sklearn_score_samples.f32  IsolationForest.score_samples
  meta.json              {"n_rows", "n_features", "outputs": [the model's output names]}
"""

import json
import pathlib
import sys
import time

import numpy as np
import onnxruntime as ort
import skl2onnx
from skl2onnx import to_onnx
from sklearn.ensemble import IsolationForest

N_FEATURES = 6


def main(out_dir):
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    train = rng.normal(size=(4000, N_FEATURES)).astype(np.float32)
    forest = IsolationForest(n_estimators=100, max_samples=256, random_state=0).fit(train)

    # Inliers, outliers, and values far outside the training range.
    rows = np.concatenate(
        [
            rng.normal(size=(800, N_FEATURES)),
            rng.normal(scale=4.0, size=(180, N_FEATURES)),
            rng.uniform(-1e6, 1e6, size=(20, N_FEATURES)),
        ]
    ).astype(np.float32)

    # skl2onnx writes LabelEncoder at ai.onnx.ml 4 by default, which it then refuses to save:
    # opset 3 of ai.onnx.ml is what it supports.
    model = to_onnx(forest, train[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    (out / "model.onnx").write_bytes(model.SerializeToString())

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(out / "model.onnx"), opts, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    results = dict(zip(names, session.run(None, {session.get_inputs()[0].name: rows})))

    rows.astype("<f4").tofile(out / "rows.f32")
    results["label"].astype("<i8").ravel().tofile(out / "ort_label.i64")
    results["scores"].astype("<f4").ravel().tofile(out / "ort_scores.f32")
    forest.predict(rows).astype("<i8").tofile(out / "sklearn_predict.i64")
    forest.decision_function(rows).astype("<f4").tofile(out / "sklearn_decision.f32")
    forest.score_samples(rows).astype("<f4").tofile(out / "sklearn_score_samples.f32")
    meta = {"n_rows": len(rows), "n_features": N_FEATURES, "outputs": names}
    (out / "meta.json").write_text(json.dumps(meta))
    return session, rows


def bench(out_dir):
    session, rows = main(out_dir)
    name = session.get_inputs()[0].name
    singles = [rows[i : i + 1] for i in range(len(rows))]
    session.run(None, {name: singles[0]})
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < 2.0:
        session.run(None, {name: singles[calls % len(singles)]})
        calls += 1
    elapsed = time.perf_counter() - start
    versions = {"onnxruntime": ort.__version__, "skl2onnx": skl2onnx.__version__}
    print(json.dumps({"ort_single_row_s": elapsed / calls, "versions": versions}))


if __name__ == "__main__":
    if len(sys.argv) == 2:
        main(sys.argv[1])
    elif len(sys.argv) == 3 and sys.argv[1] == "bench":
        bench(sys.argv[2])
    else:
        sys.exit(__doc__)
