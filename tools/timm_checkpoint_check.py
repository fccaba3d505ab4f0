#!/usr/bin/env python3
"""End-to-end check that timm checkpoints load into `mura model` and give timm's logits.

Writes, under /tmp/timmck/, a full-size timm resnet50, densenet121 and inception_v3 (1000 classes,
Inception with its AuxLogits) with random weights and non-trivial BatchNorm statistics as
`model.safetensors`-style files (the real hub files cannot be downloaded on the development machine),
an input and timm's eval-mode logits. Then run, for each ARCH:

    mura model ARCH --num-classes 1000 --weights /tmp/timmck/ARCH.safetensors --check
    mura model ARCH --num-classes 1000 --weights /tmp/timmck/ARCH.safetensors \
        --forward /tmp/timmck/ARCH_in.safetensors --out /tmp/timmck/ARCH_got.safetensors

and compare ARCH_got with ARCH_want (the last lines of this script do it when run with --compare).
Nothing is committed: the files are 30-100 MB each. Run by hand: pip install torch timm safetensors.
"""
import os
import sys

import timm
import torch
from safetensors.torch import save_file, load_file
os.makedirs("/tmp/timmck", exist_ok=True)
torch.manual_seed(0)
ARCHS = [("resnet50", 224), ("densenet121", 224), ("inception_v3", 299)]
if "--compare" in sys.argv:
    for arch, _ in ARCHS:
        g = load_file(f"/tmp/timmck/{arch}_got.safetensors")["logits"]
        w = load_file(f"/tmp/timmck/{arch}_want.safetensors")["logits"]
        print(arch, "max |ours - timm| / max |timm| =", float((g - w).abs().max() / w.abs().max()))
    sys.exit(0)
for arch, size in ARCHS:
    m = timm.create_model(arch, pretrained=False, num_classes=1000, aux_logits=True) if arch == "inception_v3" else timm.create_model(arch, pretrained=False, num_classes=1000)
    m.eval()
    # Non-trivial BN statistics, as a trained checkpoint has.
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1); mod.running_var.uniform_(0.5, 1.5)
            mod.weight.data.uniform_(0.5, 1.5); mod.bias.data.uniform_(-0.1, 0.1)
    sd = {k: v.contiguous() for k, v in m.state_dict().items()}
    save_file(sd, f"/tmp/timmck/{arch}.safetensors")
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        y = m(x)
        y = y[0] if isinstance(y, tuple) else y
    save_file({"input": x}, f"/tmp/timmck/{arch}_in.safetensors")
    save_file({"logits": y.contiguous()}, f"/tmp/timmck/{arch}_want.safetensors")
    print(arch, len(sd), "aux" if any(k.startswith("AuxLogits") for k in sd) else "", y.shape)
