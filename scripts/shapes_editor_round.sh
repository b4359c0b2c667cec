#!/usr/bin/env bash
# One round of growing the shipped shapes editor, the way each shipped one was made (model card):
# render more shapes-world datasets, retrain the shipped editor on every dataset under runs/ (or the
# ones DATA names), judge it and the shipped one with the oracle, and print them side by side.
# Shipping stays a decision: the publish command is printed, not run.
#
#   SEEDS="80 81 82 83" bash scripts/shapes_editor_round.sh [OUT]     # OUT: runs/editor-shapes-next
#
# Every step resumes when run again (datasets by shard, training from its last checkpoint); the
# generate logs (runs/logs/genSEED.log) are appended to.
# On 2 cores: a dataset takes about 20 min on one core in bfloat16, 30-40 in float32 (LANES at a
# time, default one per core); 5,000 steps 45-63 min; each oracle eval of the test scenes about 15 min. What has
# helped: more distinct pairs than the shipped editor's own run saw (`data_pairs` in its
# editsynth_train.json), so the retrain refuses fewer (train.min_pairs) unless MIN_PAIRS says
# otherwise (MIN_PAIRS=0: no floor). A round longer than a session: RENDER_ONLY=1 renders the
# datasets and stops; the same command without it later renders nothing twice and trains.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$(bash scripts/setup.sh)
OUT=${1:-runs/editor-shapes-next}
read -ra seeds <<< "${SEEDS:-}"
LANES=${LANES:-$(nproc)}
STEPS=${STEPS:-5000}
# The pairs the retrain reads: every dataset under runs/ unless DATA says otherwise. Quote it; the
# trainer expands braces and globs itself: DATA='runs/shapes-editor-data{90..119}/export/webdataset/train/*.tar'
DATA=${DATA:-'runs/shapes-editor-data*/export/webdataset/train/*.tar'}
SHIPPED_PAIRS=$("$VENV/bin/python" -c 'import json, sys; print(json.load(open(sys.argv[1])).get("data_pairs") or 0)' \
  datagen/shapes/weights/editor/editsynth_train.json)
MIN_PAIRS=${MIN_PAIRS:-$((SHIPPED_PAIRS + 1))}
# Counted over the datasets DATA names that are finished (have shards) so far.
HAVE=$("$VENV/bin/python" -c 'import glob, sys, braceexpand
from model.training.data import DataError, count_pairs, open_source
parts = list(braceexpand.braceexpand(sys.argv[1]))
ready = [p for p in parts if glob.glob(p)]
try:
    pairs = sum(count_pairs(open_source(p)) or 0 for p in ready)
    finished = f" ({len(ready)} of the {len(parts)} datasets DATA names are finished)" if len(parts) > 1 else ""
    print(f"{pairs}{finished}")
except DataError as e:
    print(f"0 ({e})")' "$DATA")
echo "the retrain needs at least $MIN_PAIRS pairs (train.min_pairs; the shipped editor's run read $SHIPPED_PAIRS);" \
  "finished datasets hold $HAVE now"
# Render in bfloat16 where the CPU computes it natively (AVX512-BF16 or AMX): 1.5x the pairs/s of
# float32, and the oracle finds as many pairs exactly correct (0.832 over ten bf16 datasets, 0.826 over
# six float32 ones: docs/benchmarks.md). float32 elsewhere (bf16 without hardware support was not
# measured). RENDER_DTYPE=float32 keeps float32.
RENDER_DTYPE=${RENDER_DTYPE:-$("$VENV/bin/python" -c 'import torch.cpu as c
native = any(getattr(c, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
print("bfloat16" if native else "float32")')}
echo "datasets render in $RENDER_DTYPE (RENDER_DTYPE)"
mkdir -p runs/logs

generate() {  # one thread per dataset run: lanes share the cores instead of fighting over them
  for seed in "$@"; do
    echo "dataset seed $seed: runs/shapes-editor-data$seed (log runs/logs/gen$seed.log)"
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$VENV/bin/editsynth" generate --pipeline shapes \
      --out "runs/shapes-editor-data$seed" --set seed="$seed" --set captions.num_triples=2000 \
      --set captions.shard_size=100 --set render.num_candidates=2 --set render.resources.actors=1 \
      --set render.dtype="$RENDER_DTYPE" \
      >> "runs/logs/gen$seed.log" 2>&1   # appended: a resumed round keeps the first log
  done
}
lanes=()
for ((lane = 0; lane < LANES && lane < ${#seeds[@]}; lane++)); do
  mine=(); for ((i = lane; i < ${#seeds[@]}; i += LANES)); do mine+=("${seeds[i]}"); done
  generate "${mine[@]}" & lanes+=($!)
done
for pid in "${lanes[@]}"; do wait "$pid"; done   # a failed lane fails the round (set -e)
if [[ ${RENDER_ONLY:-0} == 1 ]]; then
  echo "rendered; RENDER_ONLY=1 stops before the retrain"
  exit 0
fi

# The shipped editor's recipe (its editsynth_train.json): batch 32, Min-SNR 5, cosine to zero.
"$VENV/bin/python" train_editor.py --pipeline shapes \
  --data "$DATA" --out "$OUT" \
  --set train.base_model=datagen/shapes/weights/editor --set train.batch_size=32 \
  --set train.snr_gamma=5 --set train.lr_warmup_steps=100 --set train.lr_scheduler=cosine \
  --set train.max_steps="$STEPS" --set train.min_pairs="$MIN_PAIRS"
# Its own guidance, chosen on the validation scenes as the shipped one's was (about 20 min), then
# the test scenes at it (edit_config.json; the sweep keeps the paper's setting).
"$VENV/bin/editsynth" eval --oracle --pipeline shapes --editor "$OUT" --out "$OUT-val" \
  --set train.eval.oracle_scenes=validation --set train.eval.oracle_seen_phrasing=false \
  --set 'train.eval.oracle_text_guidance_sweep=[7.5,10]' --set 'train.eval.oracle_image_guidance_sweep=[1.5,2.5,4,5,6,8]'
"$VENV/bin/editsynth" edit-config "$OUT" --from "$OUT-val"
"$VENV/bin/editsynth" eval --oracle --pipeline shapes --editor "$OUT" --out "$OUT-eval"
# Judged again each round, not cached: the shipped editor may have changed since.
"$VENV/bin/editsynth" eval --oracle --pipeline shapes --editor shapes --out runs/eval-editor-shipped
"$VENV/bin/editsynth" eval-compare runs/eval-editor-shipped "$OUT-eval" | tee "$OUT-eval/compare.md"
echo "if it is better: editsynth shapes publish-editor $OUT --eval $OUT-eval   (ships its edit_config.json too)"
