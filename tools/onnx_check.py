#!/usr/bin/env python3
"""Checks `mura export` against ONNX Runtime, and times the exported files there.

For each architecture of the zoo (seeded weights, its default input size): `mura export --arch`
writes the ONNX file with its feature map; `mura model --forward` runs mura's own forward on a
random batch; ONNX Runtime runs the file on the same batch. The logits must agree to 1e-4 of their
largest value (f32 sums in another order), `probability` must be the sigmoid of the logits, and
`features` must have the shape the file declares (its values are compared with mura's in the Rust
tests, through tract). Then the file's images/s in ONNX Runtime (batch 16, `--threads` intra-op threads,
all graph optimisations) beside `mura bench model` on the same batch and threads, each the median
of `--iters` timed runs after two warm-up runs, the two measured back to back.

Usage (after `cargo build --release -p mura-cli`; onnxruntime, numpy and safetensors from PyPI):
  python3 tools/onnx_check.py [--mura target/release/mura] [--archs custom-cnn,resnet50]
      [--threads 2] [--iters 5] [--markdown]
Prints one line per model, or with --markdown the table docs/benchmarks.md holds. Exits 1 when a
model disagrees.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort
from safetensors.numpy import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = ["custom-cnn", "alexnet-style", "vgg-style", "densenet121", "densenet169", "densenet201",
         "resnet18", "resnet34", "resnet50", "inception_v3"]
TOLERANCE = 1e-4


def mura(binary, *args):
    out = subprocess.run([binary, *args], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"mura {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def session(path, threads):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def relative(a, b):
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def check(binary, arch, tmp, threads, iters, batch):
    path = os.path.join(tmp, f"{arch}.onnx")
    report = json.loads(mura(binary, "export", "--arch", arch, "--with-features", "--out", path, "--json"))
    meta = dict(report["metadata"])
    c, s = int(meta["mura.channels"]), int(meta["mura.input_size"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, c, s, s), dtype=np.float32)
    save_file({"input": x}, os.path.join(tmp, "in.safetensors"))
    out = os.path.join(tmp, "out.safetensors")
    mura(binary, "model", arch, "--forward", os.path.join(tmp, "in.safetensors"), "--out", out)
    want = load_file(out)["logits"]
    sess = session(path, threads)
    logits, probability, features = sess.run(["logits", "probability", "features"], {"input": x})
    diff = relative(logits, want)
    sigmoid = 1.0 / (1.0 + np.exp(-logits))
    prob_diff = float(np.max(np.abs(probability - sigmoid)))
    ok = diff <= TOLERANCE and prob_diff <= 1e-6 and list(features.shape[1:]) == report_dims(sess)

    xb = rng.standard_normal((batch, c, s, s), dtype=np.float32)
    for _ in range(2):
        sess.run(["logits"], {"input": xb})
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        sess.run(["logits"], {"input": xb})
        times.append(time.perf_counter() - t)
    ort_ips = batch / statistics.median(times)
    bench = json.loads(mura(binary, "bench", "model", arch, "--batch", str(batch), "--threads",
                            str(threads), "--iters", str(iters), "--json"))
    return {
        "arch": arch, "size": s, "ok": ok, "logits_diff": diff, "probability_diff": prob_diff,
        "nodes": report["nodes"], "mb": report["bytes"] / 1e6,
        "ort_ips": ort_ips, "mura_ips": bench["images_per_sec"],
    }


def report_dims(sess):
    shape = [o for o in sess.get_outputs() if o.name == "features"][0].shape
    return list(shape[1:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mura", default=os.path.join(ROOT, "target", "release", "mura"))
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in a.archs.split(","):
            r = check(a.mura, arch, tmp, a.threads, a.iters, a.batch)
            rows.append(r)
            if not a.markdown:
                print(json.dumps(r), flush=True)
    if a.markdown:
        print(f"ONNX Runtime {ort.__version__}, batch {a.batch}, {a.threads} threads, "
              f"median of {a.iters}; difference = max |ORT − mura| / max(1, max |mura|) of the logits.\n")
        print("| model | input | nodes | MB | logits difference | ORT img/s (exported file) "
              "| mura img/s | mura / ORT |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['arch']} | {r['size']} | {r['nodes']} | {r['mb']:.1f} | {r['logits_diff']:.1e} "
                  f"| {r['ort_ips']:.1f} | {r['mura_ips']:.1f} | {r['mura_ips'] / r['ort_ips']:.2f}× |")
    bad = [r["arch"] for r in rows if not r["ok"]]
    if bad:
        sys.exit(f"disagree with ONNX Runtime: {', '.join(bad)}")


if __name__ == "__main__":
    main()
