#!/usr/bin/env python3
"""Calibration check of the synthetic MURA generator: trains a small CNN with PyTorch on a synthetic
tree's official train split and reports the study-level AUC on its valid split. The generator's
abnormalities should be learnable but not trivial (study AUC around 0.9, not 1.0).

Run by hand (nothing in the build or tests needs it):
    mura synth /tmp/synth --studies 2000 --seed 0
    python3 tools/synth_learnability.py /tmp/synth [--size 96] [--epochs 8]
"""
import argparse
import csv
import os
import time

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from sklearn.metrics import roc_auc_score


def load(root, split, size):
    base = root
    paths = [r[0] for r in csv.reader(open(os.path.join(root, "MURA-v1.1", f"{split}_image_paths.csv"))) if r]
    xs, ys, studies = [], [], []
    for p in paths:
        img = Image.open(os.path.join(base, p)).convert("L").resize((size, size), Image.BILINEAR)
        xs.append(np.asarray(img, dtype=np.float32) / 255.0)
        ys.append(1.0 if "_positive/" in p else 0.0)
        studies.append(p.rsplit("/", 1)[0])
    return torch.tensor(np.stack(xs))[:, None], torch.tensor(ys), studies


def net():
    layers, c = [], 1
    for o in (16, 32, 64, 64, 128):
        layers += [nn.Conv2d(c, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]
        c = o
    return nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Dropout(0.25), nn.Linear(c, 1))


def study_auc(probs, ys, studies):
    agg = {}
    for p, y, s in zip(probs, ys, studies):
        agg.setdefault(s, [y, []])[1].append(p)
    labels = [v[0] for v in agg.values()]
    scores = [float(np.mean(v[1])) for v in agg.values()]
    return roc_auc_score(labels, scores), len(agg)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    xtr, ytr, _ = load(a.root, "train", a.size)
    xva, yva, sva = load(a.root, "valid", a.size)
    model = net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    pos = ytr.mean().item()
    lossf = nn.BCEWithLogitsLoss(pos_weight=torch.tensor((1 - pos) / pos))
    for epoch in range(a.epochs):
        t = time.time()
        model.train()
        perm = torch.randperm(len(xtr))
        for i in range(0, len(perm), 32):
            idx = perm[i:i + 32]
            x = xtr[idx]
            flip = torch.rand(len(idx)) < 0.5
            x[flip] = x[flip].flip(-1)
            opt.zero_grad()
            lossf(model(x)[:, 0], ytr[idx]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            probs = torch.cat([torch.sigmoid(model(xva[i:i + 64])[:, 0]) for i in range(0, len(xva), 64)]).tolist()
        auc, n = study_auc(probs, yva.tolist(), sva)
        img_auc = roc_auc_score(yva.numpy(), probs)
        print(f"epoch {epoch + 1}: image AUC {img_auc:.3f}, study AUC {auc:.3f} ({n} studies), {time.time() - t:.0f}s", flush=True)


if __name__ == "__main__":
    main()
