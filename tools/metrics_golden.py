#!/usr/bin/env python3
"""Writes mura-metrics/tests/fixtures/calibration_delong.json: reference values for mura-metrics'
calibration and DeLong functions, with the inputs they were computed from.

- Brier score: scikit-learn's `brier_score_loss`.
- Reliability diagrams: scikit-learn's `calibration_curve` (strategy "uniform" and "quantile"),
  and the expected / maximum calibration errors from the same bin assignment (numpy).
- DeLong: R's pROC (`var(roc, method="delong")`, `roc.test(..., method="delong", paired=TRUE)`),
  the reference implementation of DeLong's test, called through Rscript.

Run by hand (the output is committed):
    pip install scikit-learn numpy            # any recent version
    apt-get install r-base-core r-cran-proc   # Debian's R and pROC
    python3 tools/metrics_golden.py
"""
import json
import os
import subprocess
import tempfile

import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

OUT = os.path.join(os.path.dirname(__file__), "..", "mura-metrics", "tests", "fixtures",
                   "calibration_delong.json")


def cases():
    rng = np.random.default_rng(20261203)
    out = []
    # Correlated scorings of one sample, with and without ties, of several sizes.
    for n, ties in [(40, False), (300, False), (300, True), (2000, False)]:
        y = rng.random(n) < 0.4
        z = rng.normal(size=n) + 1.2 * y
        a = 1 / (1 + np.exp(-z))
        b = 1 / (1 + np.exp(-(0.7 * z + rng.normal(scale=0.8, size=n))))
        if ties:
            a = np.round(a, 1)
            b = np.round(b, 2)
        out.append({"labels": y.tolist(), "a": a.tolist(), "b": b.tolist()})
    return out


def reliability(y, p, bins, strategy):
    prob_true, prob_pred = calibration_curve(y, p, n_bins=bins, strategy=strategy)
    if strategy == "quantile":
        edges = np.percentile(p, np.linspace(0, 100, bins + 1))
    else:
        edges = np.linspace(0.0, 1.0, bins + 1)
    ids = np.searchsorted(edges[1:-1], p)  # side="left", as calibration_curve
    counts = np.bincount(ids, minlength=bins)
    counts = counts[counts > 0]
    gaps = np.abs(prob_true - prob_pred)
    return {
        "bins": bins,
        "binning": "equal-width" if strategy == "uniform" else "equal-mass",
        "fraction_positive": prob_true.tolist(),
        "mean_probability": prob_pred.tolist(),
        "count": counts.tolist(),
        "ece": float(np.sum(counts / len(p) * gaps)),
        "mce": float(np.max(gaps)),
    }


R_SCRIPT = r"""
suppressMessages(library(pROC))
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1])
ra <- roc(d$y, d$a, direction = "<", levels = c(0, 1), quiet = TRUE)
rb <- roc(d$y, d$b, direction = "<", levels = c(0, 1), quiet = TRUE)
t <- roc.test(ra, rb, method = "delong", paired = TRUE, conf.level = 0.95)
cat(sprintf("%.17g %.17g %.17g %.17g %.17g %.17g %.17g %.17g\n",
    auc(ra), var(ra, method = "delong"), auc(rb), var(rb, method = "delong"),
    t$statistic, t$p.value, t$conf.int[1], t$conf.int[2]))
"""


def delong(y, a, b):
    with tempfile.TemporaryDirectory() as d:
        data = os.path.join(d, "d.csv")
        script = os.path.join(d, "t.R")
        with open(data, "w") as f:
            f.write("y,a,b\n")
            for yi, ai, bi in zip(y, a, b):
                f.write(f"{int(yi)},{float(ai)!r},{float(bi)!r}\n")
        with open(script, "w") as f:
            f.write(R_SCRIPT)
        out = subprocess.run(["Rscript", script, data], capture_output=True, text=True, check=True)
    v = [float(x) for x in out.stdout.split()]
    return {"auc_a": v[0], "var_a": v[1], "auc_b": v[2], "var_b": v[3], "z": v[4],
            "p_value": v[5], "lower": v[6], "upper": v[7], "level": 0.95}


def main():
    result = []
    for c in cases():
        y, a, b = np.array(c["labels"]), np.array(c["a"]), np.array(c["b"])
        c["brier_a"] = float(brier_score_loss(y, a))
        c["reliability_a"] = [reliability(y, a, k, s) for k in (5, 10) for s in ("uniform", "quantile")]
        c["delong"] = delong(y, a, b)
        result.append(c)
    with open(OUT, "w") as f:
        json.dump({"cases": result}, f)
    print(f"wrote {OUT}: {len(result)} cases")


if __name__ == "__main__":
    main()
