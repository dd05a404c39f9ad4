#!/usr/bin/env python3
"""Check that an ncalm checkpoint loads in Hugging Face transformers' LlamaForCausalLM unchanged and gives
the same loss as ncalm on the same tokens.

    python3 scripts/check_hf.py --checkpoint RUN --tokens val.bin --seq-len 64 [--ncalm target/release/ncalm]

Needs torch and transformers. Exits 0 when the two losses agree within --tolerance (relative), 1 when
they do not, 2 when the checkpoint cannot be checked (e.g. it has a head bias, which Llama lacks).
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM


def resolve(path):
    latest = os.path.join(path, "latest")
    if not os.path.exists(os.path.join(path, "model.safetensors")) and os.path.exists(latest):
        with open(latest) as f:
            return os.path.join(path, f.read().strip())
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="checkpoint or run directory")
    ap.add_argument("--tokens", required=True, help="flat little-endian uint16 token file")
    ap.add_argument("--seq-len", type=int, required=True, help="inputs per block (blocks are seq-len + 1 tokens)")
    ap.add_argument("--max-sequences", type=int, default=8)
    ap.add_argument("--ncalm", default="ncalm", help="the ncalm binary")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    args = ap.parse_args()

    ckpt = resolve(args.checkpoint)
    with open(os.path.join(ckpt, "config.json")) as f:
        config = json.load(f)
    if config.get("ncalm", {}).get("arch") == "nca":
        print(f"{ckpt}: an NCA language model, which Hugging Face transformers has no class for")
        return 2
    if config.get("ncalm", {}).get("head_bias"):
        print(f"{ckpt}: the head has a bias, which LlamaForCausalLM lacks; train with --set model.head_bias=false")
        return 2

    out = subprocess.run(
        [args.ncalm, "eval", ckpt, "--tokens", args.tokens, "--seq-len", str(args.seq_len),
         "--max-sequences", str(args.max_sequences), "--json"],
        check=True, capture_output=True, text=True)
    ours = json.loads(out.stdout)

    model = LlamaForCausalLM.from_pretrained(ckpt, torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    stride = args.seq_len + 1
    tokens = np.fromfile(args.tokens, dtype="<u2").astype(np.int64)
    n = min(len(tokens) // stride, args.max_sequences)
    blocks = torch.from_numpy(tokens[: n * stride].reshape(n, stride))
    with torch.no_grad():
        logits = model(blocks[:, :-1]).logits
        theirs = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(), blocks[:, 1:].reshape(-1)).item()

    rel = abs(theirs - ours["loss"]) / abs(theirs)
    verdict = "OK" if rel <= args.tolerance else "MISMATCH"
    print(f"{verdict}: transformers loss {theirs:.6f}, ncalm loss {ours['loss']:.6f}, relative difference {rel:.2e} "
          f"({n} blocks of {args.seq_len} from {args.tokens})")
    return 0 if rel <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
