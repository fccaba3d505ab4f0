#!/usr/bin/env python3
"""Writes docs/benchmarks.md: mura against the Python programs a user would otherwise run, measured
back to back on this machine, with ratios, GFLOP/s and peak memory.

Workloads (each as `../shared/peers/README.md` describes its peer):
  pipeline  decode + resize + flips/rotation + normalise: `mura bench pipeline` against PIL +
            torchvision through a DataLoader (`pipeline.py`), on a synthetic MURA of 1,000 studies;
  infer     eval-mode forward at batch 16: `mura bench model ARCH` against PyTorch (NCHW and
            channels-last) and ONNX Runtime (`models.py`);
  train     forward, BCE, backward and an Adam step at batch 8: against PyTorch (NCHW and
            channels-last);
  kernels   `cargo bench -p mura-kernels` (criterion): each kernel against the candle op it
            replaces, read from criterion's estimates.

Every round runs each implementation once per model, in turn (ours, the other build if any, the
peers), so that a machine that drifts meets them all; the tables show medians over the rounds.
`--compare OTHER` adds another `mura` binary (an older build) to every workload of the same run.

Usage (after `cargo build --release -p mura-cli`, with the peers' venv of ../shared/peers/README.md):
  python3 tools/bench.py --python .venv-peers/bin/python [--rounds 2] [--only infer,train]
      [--compare /path/to/other/mura] [--out docs/benchmarks.md] [--raw bench.json]
Run it on an otherwise idle machine: PyTorch on 2 threads slows down many times over when another
process takes a core.
"""
import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INFER_MODELS = ["custom-cnn", "densenet121", "densenet169", "densenet201", "resnet50", "inception_v3"]
TRAIN_MODELS = ["custom-cnn", "densenet121", "resnet50"]
PEER_NAME = {"custom-cnn": "custom6"}
TITLE = {
    "custom-cnn": "custom 6-block CNN @256",
    "densenet121": "DenseNet-121 @224",
    "densenet169": "DenseNet-169 @224",
    "densenet201": "DenseNet-201 @224",
    "resnet50": "ResNet-50 @224",
    "inception_v3": "Inception-v3 @299",
}
SIZE = {"custom-cnn": 256, "inception_v3": 299}


def run_json(cmd, env=None):
    """Runs `cmd` and returns the last line of its stdout that parses as JSON."""
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        sys.exit(f"failed ({out.returncode}): {' '.join(cmd)}\n{out.stderr.strip()}")
    try:
        return json.loads(out.stdout)
    except json.JSONDecodeError:
        pass
    for line in reversed(out.stdout.strip().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    sys.exit(f"no JSON from: {' '.join(cmd)}\n{out.stdout}")


def machine(python):
    cpu = "unknown"
    flags = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line
    simd = "AVX-512" if "avx512f" in flags else ("AVX2 + FMA" if "avx2" in flags else "SSE only")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()
    torch = subprocess.run([python, "-c", "import torch; print(torch.__version__)"],
                           capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "simd": simd, "commit": commit, "torch": torch,
            "date": datetime.date.today().isoformat(), "system": platform.platform()}


def gemm_ceiling(python):
    """GFLOP/s of PyTorch's 2048³ f32 product on 2 threads: the ceiling GFLOP/s columns refer to."""
    code = ("import torch,time;torch.set_num_threads(2);a=torch.randn(2048,2048);b=torch.randn(2048,2048);"
            "[a@b for _ in range(3)];t=time.perf_counter();[a@b for _ in range(10)];"
            "print(2*2048**3*10/(time.perf_counter()-t)/1e9)")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def gflop_per_image(mura, arch):
    s = run_json([mura, "model", arch, "--image-size", str(SIZE.get(arch, 224)), "--summary", "--json"])
    return 2 * s["macs"] / 1e9


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=2):
    return "—" if v is None else f"{v:,.{digits}f}"


def ratio(a, b):
    return None if a is None or not b else a / b


# ---------------------------------------------------------------------------------------------
# Workloads

def bench_pipeline(a, raw):
    data = a.data
    if not os.path.isdir(os.path.join(data, "MURA-v1.1")):
        subprocess.run([a.mura, "synth", data, "--studies", "1000", "--seed", "1"], check=True,
                       capture_output=True)
    runs = {"mura": [], "other": [], "peer2": [], "peer0": []}
    for _ in range(a.rounds):
        runs["mura"].append(run_json([a.mura, "bench", "pipeline", data, "--threads", "2", "--epochs", "3", "--json"]))
        if a.compare:
            runs["other"].append(run_json([a.compare, "bench", "pipeline", data, "--threads", "2", "--epochs", "3", "--json"]))
        runs["peer2"].append(run_json([a.python, f"{a.peers}/pipeline.py", data, "--workers", "2", "--json"]))
        runs["peer0"].append(run_json([a.python, f"{a.peers}/pipeline.py", data, "--workers", "0", "--json"]))
    raw["pipeline"] = runs
    ours = med([r["images_per_sec"] for r in runs["mura"]])
    decode = med([r["decode_images_per_sec"] for r in runs["mura"]])
    peer = med([r["images_per_sec"] for r in runs["peer2"]])
    rows = [
        ("mura, 2 threads", ours, runs["mura"]),
        ("mura, decoding alone (same runs)", decode, None),
        ("PIL + torchvision, DataLoader with 2 workers", peer, runs["peer2"]),
        ("PIL + torchvision, no workers", med([r["images_per_sec"] for r in runs["peer0"]]), runs["peer0"]),
    ]
    if a.compare:
        rows.insert(1, ("other build, 2 threads", med([r["images_per_sec"] for r in runs["other"]]), runs["other"]))
    out = ["## Input pipeline", "",
           "Decode PNG → gray → resize to 224×224 (bilinear, antialiased) → random horizontal flip → "
           "random rotation ±30° → float → ImageNet normalisation to 3 channels, over the same 2,000 "
           f"files of `mura synth {data} --studies 1000 --seed 1` (longer side 512), the best of 3 "
           "epochs per run; decoding alone and the whole pipeline take turns within each mura run.", "",
           "| configuration | images/s (median) | runs |", "|---|---|---|"]
    for name, v, rs in rows:
        each = " / ".join(fmt(r["images_per_sec"], 0) for r in rs) if rs else ""
        out.append(f"| {name} | **{fmt(v, 0)}** | {each} |")
    out += ["", f"mura runs at **{fmt(ratio(ours, peer))}×** the fastest peer (the 2-worker DataLoader), "
                f"and the whole pipeline at **{fmt(100 * ratio(ours, decode), 0)}%** of decoding alone.", ""]
    return out


def model_round(a, arch, mode, round_runs):
    peer = PEER_NAME.get(arch, arch)
    iters = ["--iters", "3"] if mode == "train" else []
    m = round_runs.setdefault("mura", [])
    m.append(run_json([a.mura, "bench", "model", arch, "--mode", mode, "--json"] + iters))
    if a.compare:
        round_runs.setdefault("other", []).append(
            run_json([a.compare, "bench", "model", arch, "--mode", mode, "--json"] + iters))
    base = [a.python, f"{a.peers}/models.py", peer, "--mode", mode, "--json"] + iters
    round_runs.setdefault("torch", []).append(run_json(base))
    round_runs.setdefault("torch_cl", []).append(run_json(base + ["--channels-last"]))
    if mode == "infer":
        round_runs.setdefault("ort", []).append(run_json(base + ["--onnx"]))


def bench_models(a, mode, models, ceiling, raw):
    results = {arch: {} for arch in models}
    for _ in range(a.rounds):
        for arch in models:
            model_round(a, arch, mode, results[arch])
    raw[mode] = results
    batch = 16 if mode == "infer" else 8
    what = ("eval-mode forward" if mode == "infer" else
            "train-mode forward, BCE on logits, backward and an Adam step")
    title = "Inference" if mode == "infer" else "Training"
    out = [f"## {title}, batch {batch}", "",
           f"Random weights, 3-channel input, 2 threads: {what}; 2 warm-up steps, then the median "
           f"of {'5' if mode == 'infer' else '3'} steps; {a.rounds} rounds. The peer is the faster "
           "of PyTorch's two layouts (NCHW and channels-last) in each round. GFLOP/s counts the "
           "direct convolution's FLOPs of `mura model ARCH --summary`"
           + (" (training: 3× the forward)" if mode == "train" else "")
           + f"; the ceiling is PyTorch's own 2048³ product on 2 threads, **{ceiling:.1f} GFLOP/s** "
           "(3×3 layers that run by Winograd do fewer multiply-adds, so a column can near it)."]
    head = "| model | mura img/s | PyTorch img/s (faster layout) | ratio |"
    sep = "|---|---|---|---|"
    if mode == "infer":
        head += " ONNX Runtime img/s | ratio |"
        sep += "---|---|"
    if a.compare:
        head += " other build img/s | this / other |"
        sep += "---|---|"
    head += " mura GFLOP/s | % of ceiling | peak RSS mura / PyTorch |"
    sep += "---|---|---|"
    out += ["", head, sep]
    for arch in models:
        r = results[arch]
        ours = [x["images_per_sec"] for x in r["mura"]]
        best = [max(t["images_per_sec"], c["images_per_sec"]) for t, c in zip(r["torch"], r["torch_cl"])]
        o, p = med(ours), med(best)
        cells = [TITLE[arch], " / ".join(fmt(v) for v in ours), " / ".join(fmt(v) for v in best),
                 f"**{fmt(ratio(o, p))}×**"]
        if mode == "infer":
            ort = med([x["images_per_sec"] for x in r["ort"]])
            cells += [fmt(ort), f"{fmt(ratio(o, ort))}×"]
        if a.compare:
            other = med([x["images_per_sec"] for x in r["other"]])
            cells += [fmt(other), f"{fmt(ratio(o, other))}×"]
        flops = gflop_per_image(a.mura, arch) * (3 if mode == "train" else 1)
        g = None if o is None else o * flops
        rss_m = med([x["peak_rss_mb"] for x in r["mura"]])
        rss_p = med([min(t["peak_rss_mb"], c["peak_rss_mb"]) for t, c in zip(r["torch"], r["torch_cl"])])
        cells += [fmt(g, 0), f"{fmt(100 * ratio(g, ceiling), 0)}%",
                  f"{fmt(rss_m, 0)} / {fmt(rss_p, 0)} MB ({fmt(ratio(rss_m, rss_p))}×)"]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    return out


def bench_kernels(a, raw):
    """Runs the criterion benches of mura-kernels and reads each case's median."""
    env = dict(os.environ)
    subprocess.run(["cargo", "bench", "-p", "mura-kernels", "--bench", "kernels", "--", "--noplot"],
                   cwd=ROOT, check=True, env=env, capture_output=True)
    target = env.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    base = os.path.join(target, "criterion")
    # criterion keeps each case's estimates under <group>/<mura|candle>/<case>/new/.
    cases = {}
    for group in sorted(os.listdir(base)):
        for impl in ("mura", "candle"):
            idir = os.path.join(base, group, impl)
            for case in sorted(os.listdir(idir)) if os.path.isdir(idir) else []:
                est = os.path.join(idir, case, "new", "estimates.json")
                if os.path.isfile(est):
                    with open(est) as f:
                        ms = json.load(f)["median"]["point_estimate"] / 1e6
                    cases.setdefault((group, case), {})[impl] = ms
    raw["kernels"] = {f"{g}/{c}": v for (g, c), v in cases.items()}
    out = ["## Kernels against candle's ops", "",
           "`cargo bench -p mura-kernels` (criterion's median). Ratio: candle's time over ours; "
           "a case candle cannot run (a padded pool, a pool backward with kernel ≠ stride) has no "
           "candle column.", "",
           "| group | case | mura ms | candle ms | ratio |", "|---|---|---|---|---|"]
    for (group, case), v in cases.items():
        o, c = v.get("mura"), v.get("candle")
        out.append(f"| `{group}` | `{case}` | {fmt(o)} | {fmt(c)} | "
                   f"{'**' + fmt(ratio(c, o)) + '×**' if o and c else ''} |")
    out.append("")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mura", default=os.path.join(ROOT, "target/release/mura"))
    ap.add_argument("--compare", help="another mura binary measured in the same run")
    ap.add_argument("--python", default="python3", help="a Python with torch, timm, onnxruntime")
    ap.add_argument("--peers", default=os.path.join(os.path.dirname(ROOT), "shared/peers"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", default="pipeline,infer,train", help="comma-separated workloads (also: kernels)")
    ap.add_argument("--infer-models", default=",".join(INFER_MODELS))
    ap.add_argument("--train-models", default=",".join(TRAIN_MODELS))
    ap.add_argument("--data", default="/tmp/mura-bench-data")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs/benchmarks.md"))
    ap.add_argument("--raw", help="also write every run's JSON here")
    a = ap.parse_args()
    only = set(a.only.split(","))
    info = machine(a.python)
    raw = {"machine": info}
    ceiling = gemm_ceiling(a.python)
    raw["ceiling_gflops"] = ceiling
    body = []

    def keep():
        if a.raw:
            with open(a.raw, "w") as f:
                json.dump(raw, f, indent=1)

    if "pipeline" in only:
        body += bench_pipeline(a, raw)
        keep()
    if "infer" in only:
        body += bench_models(a, "infer", a.infer_models.split(","), ceiling, raw)
        keep()
    if "train" in only:
        body += bench_models(a, "train", a.train_models.split(","), ceiling, raw)
        keep()
    if "kernels" in only:
        body += bench_kernels(a, raw)
        keep()
    shown, skip = [], False
    for x in sys.argv[1:]:
        if skip:
            skip = False
        elif x in ("--out", "--raw"):
            skip = True
        elif not x.startswith(("--out=", "--raw=")):
            shown.append(x)
    cmd = "python3 tools/bench.py " + " ".join(shown)
    head = ["# Benchmarks", "",
            "mura against the Python programs a user would otherwise run (`../shared/peers/`), measured "
            "back to back in one run of `tools/bench.py` on one machine. Speed targets live here and "
            "in `cargo bench`, never as timed assertions in tests.", "",
            f"- Machine: {info['cpu']}, {info['cores']} cores, {info['simd']} ({info['system']}); "
            f"mura {info['commit']}, PyTorch {info['torch']}; {info['date']}.",
            f"- Reproduce: `cargo build --release -p mura-cli`, the peers' venv of "
            f"`../shared/peers/README.md`, then `{cmd.strip()}`.",
            "- Noise: on this shared 2-core machine one program's speed moves by up to a third between "
            "two runs a minute apart, for PyTorch as for mura; each row shows every round, and a ratio "
            "near 1 is a tie.", ""]
    text = "\n".join(head + body).rstrip() + "\n"
    with open(a.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
