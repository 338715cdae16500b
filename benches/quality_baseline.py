"""Naive detection baseline for benches/quality.rs: one scikit-learn IsolationForest per raw metric.

Protocol (the same splits and metric definitions as selfheal's quality bench):
* NAB realAWSCloudwatch: per series, fit on the first 15%, predict the remaining 85%;
  counts pooled over the series.
* SMD machines 2-1, 2-2, 3-4 and ASD omi-1 ... omi-6: one forest per metric (38 / 19), fit on
  train/, a test point alarms when any metric's forest flags it; counts pooled per data set.
Each forest: 100 trees, max_samples="auto" (256), random_state=0, contamination 0.01 and 0.001
(the two rows the issue compares with); the alarm is scikit-learn's predict() == -1, with no
smoothing and no point adjustment.

Usage: python benches/quality_baseline.py DATA_ROOT  -> one JSON object on stdout:
{"0.01": {"nab": counts, "smd": counts, "asd": counts}, "0.001": {...}}.
"""

import json
import os
import sys
from datetime import datetime, timezone

import numpy as np
from sklearn.ensemble import IsolationForest


def parse_time(s):
    s = s.strip()
    for fmt in ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S"):
        try:
            return int(datetime.strptime(s, fmt).replace(tzinfo=timezone.utc).timestamp())
        except ValueError:
            pass
    raise ValueError(s)


def counts(alarms, labels):
    alarms = np.asarray(alarms, dtype=bool)
    labels = np.asarray(labels, dtype=bool)
    c = dict(points=len(alarms), labelled_points=int(labels.sum()), alarmed_points=int(alarms.sum()),
             true_positives=int((alarms & labels).sum()), windows=0, windows_hit=0,
             detection_delay_points=0, false_alarm_points=0, false_alarm_events=0)
    fa = alarms & ~labels
    c["false_alarm_points"] = int(fa.sum())
    c["false_alarm_events"] = int((fa & ~np.concatenate([[False], fa[:-1]])).sum())
    i, n = 0, len(labels)
    while i < n:
        if labels[i]:
            j = i
            while j + 1 < n and labels[j + 1]:
                j += 1
            c["windows"] += 1
            hit = np.flatnonzero(alarms[i:j + 1])
            if len(hit):
                c["windows_hit"] += 1
                c["detection_delay_points"] += int(hit[0])
            i = j + 1
        else:
            i += 1
    return c


def add(a, b):
    return {k: a.get(k, 0) + v for k, v in b.items()}


QUANTILES = (0.01, 0.001)


def forest():
    return IsolationForest(n_estimators=100, max_samples="auto", random_state=0)


def alarms_by_quantile(train, test):
    """Per contamination q: alarm where any metric's forest flags the point.

    scikit-learn's contamination only sets offset_, the q-quantile of score_samples on the
    training rows, and predict() == -1 is score_samples < offset_; so one fit serves every q
    and is exactly IsolationForest(contamination=q).fit(train).predict(test) == -1.
    """
    out = {q: np.zeros(len(test), dtype=bool) for q in QUANTILES}
    for m in range(train.shape[1]):
        model = forest().fit(train[:, m:m + 1])
        s_train = model.score_samples(train[:, m:m + 1])
        s_test = model.score_samples(test[:, m:m + 1])
        for q in QUANTILES:
            out[q] |= s_test < np.percentile(s_train, 100.0 * q)
    return out


def nab(root):
    d = os.path.join(root, "NAB", "data", "realAWSCloudwatch")
    with open(os.path.join(root, "NAB", "labels", "combined_windows.json")) as f:
        windows = json.load(f)
    total = {q: {} for q in QUANTILES}
    for name in sorted(os.listdir(d)):
        if not name.endswith(".csv"):
            continue
        ts, vals = [], []
        with open(os.path.join(d, name)) as f:
            next(f)
            for line in f:
                t, v = line.rstrip("\n").split(",")
                ts.append(parse_time(t))
                vals.append(float(v))
        ts, x = np.array(ts), np.array(vals, dtype=np.float32).reshape(-1, 1)
        labels = np.zeros(len(ts), dtype=bool)
        for key, ws in windows.items():
            if key.rsplit("/", 1)[-1] == name:
                for a, b in ws:
                    labels |= (ts >= parse_time(a)) & (ts <= parse_time(b))
        cut = int(round(len(ts) * 0.15))
        for q, alarms in alarms_by_quantile(x[:cut], x[cut:]).items():
            total[q] = add(total[q], counts(alarms, labels[cut:]))
    return total


def split(base, names):
    total = {q: {} for q in QUANTILES}
    for name in names:
        load = lambda part: np.loadtxt(os.path.join(base, part, name + ".txt"), delimiter=",",
                                       dtype=np.float32, ndmin=2)
        train, test = load("train"), load("test")
        labels = np.loadtxt(os.path.join(base, "test_label", name + ".txt"), dtype=int) == 1
        for q, alarms in alarms_by_quantile(train, test).items():
            total[q] = add(total[q], counts(alarms, labels))
    return total


if __name__ == "__main__":
    root = sys.argv[1]
    smd = split(os.path.join(root, "SMD", "ServerMachineDataset"),
                ["machine-2-1", "machine-2-2", "machine-3-4"])
    asd = split(os.path.join(root, "ASD"), ["omi-%d" % i for i in range(1, 7)])
    nab_counts = nab(root)
    print(json.dumps({str(q): {"nab": nab_counts[q], "smd": smd[q], "asd": asd[q]}
                      for q in QUANTILES}))
