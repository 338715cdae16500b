"""Point-wise F1 of scikit-learn's IsolationForest on given feature rows (used by tests/model.rs).

Usage: sklearn_iforest_f1.py TRAIN.csv TEST.csv LABELS.txt TREES MAX_SAMPLES CONTAMINATION SEEDS
TRAIN/TEST: comma-separated feature rows, no header (selfheal's features, as f32).
LABELS: one 0/1 per test row. Alarm = predict() == -1 (score below the contamination offset).
One forest per random_state 0..SEEDS-1; prints {"f1": [per seed], "mean_f1": ...}.
"""

import json
import sys

import numpy as np
from sklearn.ensemble import IsolationForest

train_path, test_path, labels_path, trees, psi, contamination, seeds = sys.argv[1:8]
train = np.loadtxt(train_path, delimiter=",", dtype=np.float32, ndmin=2)
test = np.loadtxt(test_path, delimiter=",", dtype=np.float32, ndmin=2)
labels = np.loadtxt(labels_path, dtype=int) == 1
f1s = []
for seed in range(int(seeds)):
    model = IsolationForest(
        n_estimators=int(trees),
        max_samples=int(psi),
        contamination=float(contamination),
        random_state=seed,
    ).fit(train)
    alarms = model.predict(test) == -1
    tp = int((alarms & labels).sum())
    precision = tp / max(int(alarms.sum()), 1)
    recall = tp / max(int(labels.sum()), 1)
    f1s.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
print(json.dumps({"f1": f1s, "mean_f1": sum(f1s) / len(f1s)}))
