#!/usr/bin/env bash
# OWLoRA (+BPPL) vs fine-tuning on the offline digit_bags stream (conf/experiment/comel_digit_bags.yaml), 3 seeds, CPU.
# Usage: bash experiments/comel_digit_bags/sweep.sh OUT_DIR ; then python -m experiments.aggregate OUT_DIR/<arm>
set -euo pipefail
out=${1:?usage: sweep.sh OUT_DIR}
for method in owlora finetune; do
  python -m cl.run -m experiment=comel_digit_bags method=$method seed=0,1,2 hydra.sweep.dir="$out/$method" \
    trainer.enable_progress_bar=false
done
