#!/usr/bin/env python3
"""Projects a data-parallel run of a preset onto N GPUs: the bytes each rank communicates per step, the
all-reduce's share of a step, and the wall time of the paper's full run (stage 1, then stage 2).

The model of a step (docs/distributed.md, "Projection"):
  compute   = tokens per step / (N x tokens/s of one GPU)
  all-reduce = gradient bytes / host_bw          (GPU -> host staging)
             + 2 (N - 1) / N x gradient bytes / net_bw   (ring all-reduce between ranks)
             + gradient bytes / host_bw          (host -> GPU)
with no credit taken for the overlap of the next bucket's copy with the current all-reduce.

One GPU's tokens/s for the full model is derived from a measured training step at the same width (the
2-layer `scripts/width-1.6b.toml`, docs/performance.md) by its achieved FLOP/s, the model's training
FLOPs per token, and a third more arithmetic when the preset recomputes layers.

    python3 scripts/project_distributed.py                        # the paper's run, defaults below
    python3 scripts/project_distributed.py --measured-tps 40000   # after a faster kernel is measured
"""

import argparse
import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PRESETS = ROOT / "assets" / "presets"

# Defaults of the model and NCA settings (src/model/config.rs, src/config/data.rs).
MODEL_DEFAULTS = {"head_bias": False, "tie_embeddings": False}
NCA_STATES = 10
GPT2_VOCAB = 50257


def padded(v, to=64):
    return (v + to - 1) // to * to


def load(name):
    path = pathlib.Path(name)
    if not path.exists():
        path = PRESETS / f"{name}.toml"
    with open(path, "rb") as f:
        return tomllib.load(f)


def parameters(model, vocab, stage2):
    """Parameters of a transformer preset (ModelConfig::parameters); stage 2 drops the head's bias."""
    d, h, layers = model["d_model"], model["mlp_hidden"], model["layers"]
    body = layers * (4 * d * d + 3 * d * h + 2 * d)
    bias = model.get("head_bias", MODEL_DEFAULTS["head_bias"]) and not stage2
    head = 0 if model.get("tie_embeddings", False) else vocab * d + (vocab if bias else 0)
    return vocab * d + body + d + head


def flops_per_token(model, vocab, stage2):
    """Training FLOPs per token (ModelConfig::flops_per_token): 6 N + 12 L T d, N without the embedding."""
    d = model["d_model"]
    tied = vocab * d if model.get("tie_embeddings", False) else 0
    multiplied = parameters(model, vocab, stage2) - vocab * d + tied
    return 6 * multiplied + 12 * model["layers"] * model["context"] * d


def stage_vocab(stage2):
    return padded(GPT2_VOCAB) if stage2 else padded(NCA_STATES**4 + 2)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="paper-1.6b")
    p.add_argument("--measured-preset", default=str(ROOT / "scripts" / "width-1.6b.toml"),
                   help="the preset whose step was measured on one GPU")
    p.add_argument("--measured-tps", type=float, default=18_599,
                   help="its tokens/s on one GPU (H100 over Vulkan, f32, docs/performance.md)")
    p.add_argument("--net-gbs", type=float, default=25.0,
                   help="all-reduce bandwidth per rank, GB/s (200 Gb/s InfiniBand per GPU)")
    p.add_argument("--host-gbs", type=float, default=20.0,
                   help="GPU <-> host staging bandwidth per direction, GB/s (PCIe 5 x16, mapped buffers)")
    p.add_argument("--stage1-tokens", type=float, default=164e6)
    p.add_argument("--stage2-tokens", type=float, default=9e9)
    p.add_argument("--gpus", default="1,8,64")
    p.add_argument("--bytes", action="store_true",
                   help="print the bytes each transformer preset communicates per step, and stop")
    a = p.parse_args()
    if a.bytes:
        bytes_table()
        return

    measured = load(a.measured_preset)["model"]
    achieved = a.measured_tps * flops_per_token(measured, stage_vocab(False), False)
    preset = load(a.preset)
    model = preset["model"]
    print(f"one GPU: {a.measured_tps:,.0f} tokens/s measured on {pathlib.Path(a.measured_preset).name} "
          f"= {achieved / 1e12:.1f} TFLOP/s achieved")
    print(f"assumed: all-reduce {a.net_gbs} GB/s per rank, staging {a.host_gbs} GB/s per direction\n")
    print("| stage | GPUs | grad MiB/step | sent per rank/step | compute s/step | all-reduce s/step | share | stage wall time |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    total = {}
    for stage, section, tokens in [(1, "train", a.stage1_tokens), (2, "text", a.stage2_tokens)]:
        t = preset[section]
        stage2 = stage == 2
        vocab = stage_vocab(stage2)
        grad_bytes = 4 * parameters(model, vocab, stage2)
        recompute = 4 / 3 if t.get("recompute", "none") == "layer" else 1.0
        tps = achieved / (flops_per_token(model, vocab, stage2) * recompute)
        sequences = t["batch"] * t["grad_accum"]
        step_tokens = sequences * model["context"]
        steps = tokens / step_tokens
        for n in (int(g) for g in a.gpus.split(",")):
            if n > sequences:
                print(f"| {stage} | {n} | - | - | - | - | - | more ranks than the step's {sequences} sequences |")
                continue
            compute = step_tokens / (n * tps)
            ring = 2 * (n - 1) / n * grad_bytes if n > 1 else 0
            comm = (2 * grad_bytes / (a.host_gbs * 1e9) + ring / (a.net_gbs * 1e9)) if n > 1 else 0.0
            wall = steps * (compute + comm)
            total[n] = total.get(n, 0.0) + wall
            print(f"| {stage} | {n} | {grad_bytes / 2**20:,.0f} | {ring / 1e9:.1f} GB | {compute:.1f} | "
                  f"{comm:.2f} | {100 * comm / (compute + comm):.0f}% | {wall / 86400:.1f} days |")
    print()
    for n, wall in total.items():
        print(f"{n} GPUs: both stages in {wall / 86400:.1f} days")


def bytes_table():
    """Gradient bytes per step of each transformer preset, and what one rank sends in a ring all-reduce."""
    print("| preset | stage | parameters | gradient MiB/step | sent per rank: 2 ranks | 8 ranks | 64 ranks |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in ["tiny", "small", "paper-1.6b"]:
        model = load(name)["model"]
        for stage2 in (False, True):
            vocab = stage_vocab(stage2)
            n = parameters(model, vocab, stage2)
            g = 4 * n
            sent = [f"{2 * (k - 1) / k * g / 2**20:,.1f} MiB" for k in (2, 8, 64)]
            stage = "2 (GPT-2 vocabulary)" if stage2 else "1 (NCA vocabulary)"
            print(f"| `{name}` | {stage} | {n / 1e6:,.2f}M | {g / 2**20:,.1f} | " + " | ".join(sent) + " |")


if __name__ == "__main__":
    main()
