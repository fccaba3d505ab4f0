#!/usr/bin/env python3
"""Writes mura-metrics/tests/fixtures/sklearn_golden.json: metric values computed by scikit-learn on
fixed random inputs (with ties), the ground truth for mura-metrics' golden tests.

Run by hand:  pip install scikit-learn numpy && python3 tools/sklearn_golden.py
"""
import json
import os

import numpy as np
import sklearn
from sklearn.metrics import (accuracy_score, cohen_kappa_score, confusion_matrix, f1_score, log_loss,
                             precision_score, recall_score, roc_auc_score, roc_curve)

OUT = os.path.join(os.path.dirname(__file__), "..", "mura-metrics", "tests", "fixtures", "sklearn_golden.json")


def case(name, y, p, threshold=0.5, weights=None):
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=np.float64)
    pred = (p > threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    return {
        "name": name,
        "labels": y.tolist(),
        "probs": p.tolist(),
        "threshold": threshold,
        "weights": None if weights is None else list(weights),
        "log_loss": log_loss(y, p, labels=[0, 1], sample_weight=weights),
        "roc_auc": roc_auc_score(y, p),
        "accuracy": accuracy_score(y, pred),
        "precision": precision_score(y, pred, zero_division=np.nan),
        "recall": recall_score(y, pred),
        "specificity": tn / (tn + fp),
        "f1": f1_score(y, pred),
        "kappa": cohen_kappa_score(y, pred),
        "confusion": [int(tn), int(fp), int(fn), int(tp)],
        # The first threshold is +inf: not representable in JSON, and not compared.
        "roc_fpr": fpr.tolist(),
        "roc_tpr": tpr.tolist(),
        "roc_thresholds": thr[1:].tolist(),
    }


def main():
    rng = np.random.default_rng(20261122)
    cases = []
    # Continuous scores, mildly informative.
    y = rng.integers(0, 2, 300)
    p = np.clip(0.5 + 0.25 * (y - 0.5) + rng.normal(0, 0.2, 300), 0.001, 0.999)
    cases.append(case("continuous_300", y, p))
    # Heavy ties: scores rounded to one decimal.
    y = rng.integers(0, 2, 200)
    p = np.round(np.clip(0.4 + 0.3 * y + rng.normal(0, 0.25, 200), 0, 1), 1)
    cases.append(case("ties_200", y, p))
    # Imbalanced like the hand (27% abnormal), other threshold, weighted loss.
    y = (rng.random(150) < 0.27).astype(int)
    p = np.clip(0.3 + 0.3 * y + rng.normal(0, 0.2, 150), 0.0, 1.0)
    w = np.where(y == 1, 1.2374, 0.8390)
    cases.append(case("imbalanced_weighted_150", y, p, threshold=0.35, weights=w.tolist()))
    # A small hand-made case with exact 0 and 1 probabilities (loss clipping).
    cases.append(case("clipped_8", [0, 0, 1, 1, 0, 1, 0, 1], [0.0, 0.2, 1.0, 0.6, 0.6, 0.0, 0.5, 0.5]))
    with open(OUT, "w") as f:
        json.dump({"sklearn": sklearn.__version__, "cases": cases}, f)
        f.write("\n")


if __name__ == "__main__":
    main()
