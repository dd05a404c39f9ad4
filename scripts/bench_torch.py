#!/usr/bin/env python3
"""Time a training step of the same Llama configuration in PyTorch (fp32, TF32, bf16 autocast) and in
ncalm on the same device, and print tokens/s side by side with the ratio.

    python3 scripts/bench_torch.py --preset small --ncalm target/release/ncalm

The PyTorch model is transformers' LlamaForCausalLM built from the preset (vocabulary 10,048, the NCA
stage's), trained with Adam on random tokens with the preset's micro-batch and accumulation, and with
gradient checkpointing of every decoder layer where the preset recomputes layers (train.recompute =
"layer"), as ncalm does; ncalm's figure is `ncalm profile --json`'s wall-clock step time on the same
preset, in f32, in f16 on the half-precision kernel alone, and in f16 with cooperative matrices (tensor
cores) where the adapter runs that kernel (tuning then picks between the two per shape).
"""
import argparse
import json
import os
import subprocess
import sys
import time
import tomllib

import torch
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_preset(name):
    path = name if os.path.exists(name) else os.path.join(ROOT, "assets", "presets", f"{name}.toml")
    with open(path, "rb") as f:
        return tomllib.load(f)


def torch_tokens_per_s(preset, mode, warmup, steps):
    m, t = preset["model"], preset["train"]
    cfg = LlamaConfig(
        vocab_size=10048, hidden_size=m["d_model"], intermediate_size=m["mlp_hidden"],
        num_hidden_layers=m["layers"], num_attention_heads=m["heads"], num_key_value_heads=m["heads"],
        max_position_embeddings=m["context"], rms_norm_eps=1e-6, rope_theta=10000.0,
        attention_dropout=m.get("attn_dropout", 0.0), tie_word_embeddings=False)
    torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    torch.backends.cudnn.allow_tf32 = mode == "tf32"
    model = LlamaForCausalLM(cfg).cuda().train()
    if t.get("recompute", "none") == "layer":
        model.gradient_checkpointing_enable()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    batch, accum, ctx = t["batch"], t["grad_accum"], m["context"]
    x = torch.randint(0, 10048, (batch, ctx), device="cuda")

    def step():
        for _ in range(accum):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=mode == "bf16"):
                loss = model(x, labels=x).loss
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    del model, opt
    torch.cuda.empty_cache()
    return batch * accum * ctx / seconds


def cooperative_matmul(ncalm):
    """True where the adapter runs ncalm's matmul on cooperative matrices, else why not."""
    out = subprocess.run([ncalm, "info", "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        return "ncalm info failed"
    return json.loads(out.stdout).get("cooperative_matmul", "not reported by this ncalm")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--ncalm", default="ncalm")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--modes", default="fp32,tf32,bf16", help="PyTorch modes to time, comma-separated")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this comparison needs one")
        return 2
    preset = load_preset(args.preset)
    # Columns: f32; f16 with cooperative matrices withheld (the half-precision kernel alone); f16 with
    # them, where the adapter runs the cooperative-matrix kernel.
    without_coop = ",".join(filter(None, [os.environ.get("NCALM_DISABLE_FEATURES", ""), "coop"]))
    runs = [("f32", "f32", {}), ("f16", "f16", {"NCALM_DISABLE_FEATURES": without_coop})]
    coop = cooperative_matmul(args.ncalm)
    if coop is True:
        runs.append(("f16+coop", "f16", {}))
    else:
        print(f"ncalm f16+coop: unavailable ({coop})")
    ncalm = {}
    for column, precision, env in runs:
        cmd = [args.ncalm, "profile", "--preset", args.preset, "--json", "--steps", "1",
               "--warmup", str(args.warmup + args.steps), "--set", f"train.precision={precision}"]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
        if out.returncode != 0:
            # f16 needs the adapter's f16 arithmetic; say why it is missing and go on.
            print(f"ncalm {column}: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else 'failed'}")
            continue
        ncalm[column] = json.loads(out.stdout)
    if "f32" not in ncalm:
        return 1
    print(f"device: {torch.cuda.get_device_name()} (PyTorch {torch.__version__}); ncalm on {ncalm['f32']['device']}")
    for precision, r in ncalm.items():
        print(f"preset {args.preset}: {r['tokens_per_s']:.0f} tokens/s in ncalm ({precision})")
    header = "".join(f" {'ncalm ' + p + ' / PyTorch':>24}" for p in ncalm)
    print(f"{'PyTorch mode':<14} {'tokens/s':>12}{header}")
    for mode in args.modes.split(","):
        tps = torch_tokens_per_s(preset, mode, args.warmup, args.steps)
        ratios = "".join(f" {r['tokens_per_s'] / tps:>24.3f}" for r in ncalm.values())
        print(f"{mode:<14} {tps:>12.0f}{ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
