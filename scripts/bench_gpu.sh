#!/usr/bin/env bash
# Every GPU figure of docs/performance.md in one run: kernel variants (tuning the shape classes they
# meet), NCA generation, per-kernel profiles of both architectures in f32, f16 and f16 with cooperative
# matrices (where the adapter has them), and the training step beside PyTorch (which needs torch and
# transformers).
#
#     scripts/bench_gpu.sh [OUT_DIR]        # default: bench-out
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-out}
mkdir -p "$out"
cargo build --release || exit 1
ncalm=${CARGO_TARGET_DIR:-target}/release/ncalm
$ncalm info | tee "$out/info.txt"
cargo bench --bench kernels 2>&1 | tee "$out/kernels.txt"
# Every NCA simulator kernel's tokens/s side by side, each checked token for token against sim1.
cargo bench --bench generation 2>&1 | tee "$out/generation.txt"
# Token generation on the GPU (key-value cache and sampler on the device) beside the host generator.
cargo bench --bench decode 2>&1 | tee "$out/decode.txt"
# Whether the adapter runs the matmul kernel on cooperative matrices (tensor cores), and why not.
coop=$($ncalm info | sed -n 's/^cooperative matmul *//p')
echo "f16 + cooperative matrices: $coop" | tee "$out/coop.txt"
for preset in small nca-small; do
    $ncalm profile --preset "$preset" --steps 2 2>&1 | tee "$out/profile-$preset.txt"
    # Half precision, where the adapter has f16 arithmetic (refused otherwise): on the f16 kernel alone,
    # and with the one on cooperative matrices too where the adapter runs it (tuning picks per shape).
    NCALM_DISABLE_FEATURES=coop $ncalm profile --preset "$preset" --steps 2 --set train.precision=f16 2>&1 \
        | tee "$out/profile-$preset-f16.txt"
    if [[ $coop == "coop16 runs"* ]]; then
        $ncalm profile --preset "$preset" --steps 2 --set train.precision=f16 2>&1 \
            | tee "$out/profile-$preset-f16-coop.txt"
    fi
done
python3 scripts/bench_torch.py --preset small --ncalm "$ncalm" 2>&1 | tee "$out/torch-small.txt"
python3 scripts/bench_torch.py --preset scripts/width-1.6b.toml --steps 5 --ncalm "$ncalm" 2>&1 \
    | tee "$out/torch-1.6b-width.txt"
# The whole paper model at its preset micro-batch, recomputing layers (PyTorch with gradient
# checkpointing), after its memory plan.
$ncalm info --preset paper-1.6b | tee "$out/info-1.6b.txt"
python3 scripts/bench_torch.py --preset paper-1.6b --warmup 1 --steps 2 --modes fp32,bf16 --ncalm "$ncalm" 2>&1 \
    | tee "$out/torch-1.6b.txt"
echo "wrote $out/"
