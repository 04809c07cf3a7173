#!/usr/bin/env bash
# The class-conditional proof on the built-in data, on a CPU: a VQGAN, a class-conditional transformer over its
# codes, then `tamer eval classes` (a shape classifier trained on real scenes names the class of each sample).
# About an hour on 2 CPU cores (VQGAN ~17 min, encoding ~3 min, transformer ~35 min, judge ~2 min); minutes on a GPU.
# A stage whose model exists is reused, and an interrupted stage resumes from its last checkpoint.
# Usage: scripts/class-proof.sh [RUNS_DIR]   (default runs/class-proof; results in RUNS_DIR/classes.json)
# VQGAN_STEPS, GPT_STEPS and JUDGE_STEPS shorten it for a quick look (defaults 2400, 12000, 800).
set -euo pipefail
runs="${1:-runs/class-proof}"
tamer="${TAMER:-.venv/bin/tamer}"
scene=(data.max_distractors=0 data.plain=true data.object_centric=true
       val_data.max_distractors=0 val_data.plain=true val_data.object_centric=true)

if [[ ! -f "$runs/vqgan/model/config.json" ]]; then
  # the demo's tokenizer (tamer/demo/run.py): 512 codes of 32 dims, batch 8, gradients clipped at 1, no GAN
  "$tamer" train vqgan --config vqgan_tiny_cpu --out "$runs/vqgan" --resume \
    train.steps="${VQGAN_STEPS:-2400}" train.batch_size=8 model.quantizer.num_codes=512 model.quantizer.embed_dim=32 \
    train.max_grad_norm=1.0 loss.disc_start=100000 data.length=20000 "${scene[@]}"
fi
if [[ ! -f "$runs/class/model/config.json" ]]; then
  "$tamer" train transformer --config transformer_tiny_class --out "$runs/class" --resume \
    first_stage="$runs/vqgan/model" train.steps="${GPT_STEPS:-12000}" train.batch_size=32 data.length=40000 \
    train.val_every=2000 train.checkpoint_every=2000 train.image_every=4000 "${scene[@]}"
fi
"$tamer" eval classes --model "$runs/class/model" --plain --object-centric --max-distractors 0 --cfg-scale 1 3 5 8 -n 20 \
  --judge-steps "${JUDGE_STEPS:-800}" --out "$runs/classes.json"
