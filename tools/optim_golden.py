#!/usr/bin/env python3
"""Writes mura-train/tests/fixtures/optim_torch.json: parameters after 6 steps of PyTorch's Adam,
AdamW and SGD (momentum, Nesterov, weight decay) on a fixed quadratic loss, the ground truth for
mura-train's optimisers, and PyTorch's BCE-with-logits on extreme logits.

loss(p) = sum(a * p^2) + sum(b * p) over two parameters with fixed a, b, starting values p0.
The learning rate changes to lr/2 after step 3 (as ReduceLROnPlateau would).

Run by hand:  pip install torch && python3 tools/optim_golden.py
"""
import json
import os

import torch
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(__file__), "..", "mura-train", "tests", "fixtures", "optim_torch.json")

P0 = [[[0.5, -1.0], [1.5, 0.25], [-0.75, 2.0]], [0.1, -0.2, 0.3, -0.4]]
A = [[[1.0, 0.5], [2.0, 1.5], [0.25, 3.0]], [1.0, 2.0, 0.5, 4.0]]
B = [[[0.1, -0.3], [0.2, 0.0], [-0.5, 0.4]], [0.3, -0.1, 0.0, 0.2]]

CASES = [
    ("adam", lambda ps: torch.optim.Adam(ps, lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)),
    ("adamw", lambda ps: torch.optim.AdamW(ps, lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)),
    ("sgd", lambda ps: torch.optim.SGD(ps, lr=0.1)),
    ("sgd_momentum", lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01)),
    ("sgd_nesterov", lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
]


def main():
    out = {"p0": P0, "a": A, "b": B, "steps": 6, "halve_lr_after": 3, "cases": {}}
    for name, make in CASES:
        ps = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in P0]
        a = [torch.tensor(x, dtype=torch.float64) for x in A]
        b = [torch.tensor(x, dtype=torch.float64) for x in B]
        opt = make(ps)
        for step in range(6):
            if step == 3:
                for g in opt.param_groups:
                    g["lr"] = g["lr"] / 2
            opt.zero_grad()
            loss = sum((ai * p * p).sum() + (bi * p).sum() for p, ai, bi in zip(ps, a, b))
            loss.backward()
            opt.step()
        out["cases"][name] = [p.detach().flatten().tolist() for p in ps]
    z = torch.tensor([30.0, -30.0, 100.0, -100.0, 0.0, 2.5], dtype=torch.float64)
    t = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    w = torch.tensor([1.0, 2.0, 0.5, 1.0, 1.5, 3.0], dtype=torch.float64)
    out["bce"] = {
        "logits": z.tolist(), "targets": t.tolist(), "weights": w.tolist(),
        "mean": F.binary_cross_entropy_with_logits(z, t).item(),
        "weighted_mean": F.binary_cross_entropy_with_logits(z, t, weight=w).item(),
    }
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
