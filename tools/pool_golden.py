#!/usr/bin/env python3
"""Writes mura-models/tests/fixtures/pool_torch.json: PyTorch max/avg pooling outputs and input
gradients (of sum(output * w)) for the kernel/stride/padding combinations the zoo uses.

Run by hand:  pip install torch && python3 tools/pool_golden.py
"""
import json
import os

import torch
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(__file__), "..", "mura-models", "tests", "fixtures", "pool_torch.json")

CASES = [
    # name, kind, kernel, stride, padding, count_include_pad
    ("resnet_stem_max_3_2_1", "max", (3, 3), (2, 2), (1, 1), True),
    ("densenet_transition_avg_2_2_0", "avg", (2, 2), (2, 2), (0, 0), True),
    ("inception_max_3_2_0", "max", (3, 3), (2, 2), (0, 0), True),
    ("inception_branch_avg_3_1_1", "avg", (3, 3), (1, 1), (1, 1), True),
    ("avg_3_1_1_exclude_pad", "avg", (3, 3), (1, 1), (1, 1), False),
    ("custom_cnn_max_2_2_0", "max", (2, 2), (2, 2), (0, 0), True),
    ("asymmetric_max_1x3", "max", (1, 3), (1, 2), (0, 1), True),
]


def main():
    g = torch.Generator().manual_seed(20261122)
    x0 = torch.randn(2, 3, 9, 8, generator=g, dtype=torch.float64)
    cases = []
    for name, kind, k, s, p, cip in CASES:
        x = x0.clone().requires_grad_(True)
        if kind == "max":
            y = F.max_pool2d(x, k, s, p)
        else:
            y = F.avg_pool2d(x, k, s, p, count_include_pad=cip)
        w = torch.randn(y.shape, generator=g, dtype=torch.float64)
        (y * w).sum().backward()
        cases.append({"name": name, "kind": kind, "kernel": k, "stride": s, "padding": p,
                      "count_include_pad": cip, "output_shape": list(y.shape),
                      "output": y.detach().flatten().tolist(), "weights": w.flatten().tolist(),
                      "input_grad": x.grad.flatten().tolist()})
    with open(OUT, "w") as f:
        json.dump({"torch": torch.__version__, "input_shape": list(x0.shape), "input": x0.flatten().tolist(),
                   "cases": cases}, f)
        f.write("\n")


if __name__ == "__main__":
    main()
