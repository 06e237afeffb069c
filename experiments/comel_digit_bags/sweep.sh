#!/usr/bin/env bash
# OWLoRA (+BPPL) vs fine-tuning, EWC and LwF on the offline digit_bags stream (conf/experiment/comel_digit_bags.yaml),
# 3 seeds each, CPU; plus owlora at the method's default svd_energy 0.99 and with the reference's unloaded basis.
# Usage: bash experiments/comel_digit_bags/sweep.sh OUT_DIR ; then python -m experiments.aggregate OUT_DIR/<arm>
# One thread per run: on a shared 2-core machine torch's 2 threads made a step ~10x slower.
set -euo pipefail
out=${1:?usage: sweep.sh OUT_DIR}
export OMP_NUM_THREADS=1
run() {  # arm, overrides...
  local arm=$1
  shift
  python -m cl.run -m experiment=comel_digit_bags seed=0,1,2 hydra.sweep.dir="$out/$arm" \
    trainer.enable_progress_bar=false "$@"
}
run owlora_narrow
run finetune method=finetune
run ewc method=ewc
run lwf method=lwf
run owlora_e099 method=owlora
run owlora_refbasis method.initial_basis=reference
