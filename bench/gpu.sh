#!/usr/bin/env bash
# Every GPU check and figure of the project in one run, for a session that is lent a GPU:
# the CUDA-vs-CPU training test, then each benchmark at Stable Diffusion size (random weights
# cost what trained ones do). Most important first; each under its own time limit, so one
# that hangs or fails costs only its own slot. Per benchmark: DIR/NAME.log, whose last line is
# its JSON; DIR/summary.jsonl gathers those lines.
#
#   bash bench/gpu.sh runs/bench-gpu        # python3 with editsynth's dependencies (CUDA torch) and
#                                            # bitsandbytes (8-bit Adam: pip install bitsandbytes)
set -u
out=${1:-runs/bench-gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
py=${PYTHON:-python3}

run() {  # run NAME SECONDS CMD...: the command's output to NAME.log, its last line to summary.jsonl
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    echo "== $name: rc $rc, $((SECONDS - t0)) s: $*"
    tail -n 1 "$out/$name.log"
    tail -n 1 "$out/$name.log" | grep "^{" | sed "s/^{/{\"bench\": \"$name\", \"rc\": $rc, /" >> "$out/summary.jsonl"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# Fail fast (seconds, not the lease) when an import is missing.
$py -c "import torch, diffusers, bitsandbytes, open_clip, pydantic; from model.training import loop, objective; \
from datagen.p2p import render; from datagen.filter import scorer; \
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'diffusers', diffusers.__version__)" || exit 3

run cuda-test 120 $py -m pytest -q -s -p no:cacheprovider tests/model/test_cuda_paths.py
# Stage 4 (issue 6): SD-size editor training, peak memory at 256 and 512 px, the paper's memory recipe.
sd_train="$py bench/train.py --device cuda --preset sd --precision fp16 --gradient-checkpointing --use-8bit-adam --steps 18 --rounds 3 --warmup 3"
run train-sd-256-b4 120 $sd_train --resolution 256 --batch 4
run train-sd-512-b4 120 $sd_train --resolution 512 --batch 4
run train-sd-256-b32-bf16 100 $py bench/train.py --device cuda --preset sd --precision bf16 --resolution 256 --batch 32 --steps 12 --rounds 3 --warmup 3
run train-shapes-b64 60 $py bench/train.py --device cuda --preset shapes --precision bf16 --batch 64 --steps 60 --rounds 3 --warmup 5
# Stages 2 and 3, and serving.
run p2p-sd15 120 $py bench/p2p.py --device cuda --model sd15 --candidates 8 --batch-size 8 --steps 20
run filter-vitl14 90 $py bench/filter.py --model ViT-L-14 --device cuda --precision fp16 --n 512 --batch 128
run edit-sd 150 $py bench/edit.py --device cuda --steps 20 --repeats 5
echo "done in $SECONDS s"
