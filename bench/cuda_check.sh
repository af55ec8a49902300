#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one go (figures: bench/RESULTS.md, "On a CUDA GPU").
#
#   bash bench/cuda_check.sh [tests|speed|pipeline ...]     # default: all three; logs under $OUT
#
# tests:    tests/test_cuda.py (bf16 autocast, flash SDPA, torch.compile), kill-and-resume on
#           CUDA (tests/test_resume.py) and the front end's TF32 Kaldi match.
# speed:    bench/pretrain_speed.py on the papers' input (128 x 1024, base encoder, batch 24):
#           bf16, bf16 + torch.compile, TF32, and TF32 with unfused (math) attention.
# pipeline: the quickstart recipe's pretrain -> teacher -> students on the GPU (bf16 autocast,
#           `auto` device), data synthesized there first (into $DATA, default data/cuda_check).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/cuda_check}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-python3}"
parts=("${@:-tests speed pipeline}")
status=0

nvidia-smi -L
"$PYTHON" -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'
for part in ${parts[@]}; do
  case "$part" in
    tests)
      "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_resume.py \
        tests/test_frontend.py::test_cuda_matches_kaldi_even_with_tf32_allowed 2>&1 | tee "$OUT/tests.log" || status=1 ;;
    speed)
      for flags in "--bf16" "--bf16 --compile --warmup 5" "" "--attention math"; do
        echo "## pretrain_speed $flags"
        "$PYTHON" bench/pretrain_speed.py --device cuda $flags --steps 10 --rounds 2 || status=1
      done 2>&1 | tee "$OUT/speed.md" ;;
    pipeline)
      ( time "$PYTHON" -m edgeast.cli train --recipe train/recipes/quickstart.yaml \
          --set run_dir="$OUT/quickstart" --set data.root="${DATA:-data/cuda_check}" --set data.synth.workers=12 \
          --set pretrain.engine.num_workers=4 --set finetune.engine.num_workers=4 --set distill.engine.num_workers=4 ) 2>&1 | tee "$OUT/pipeline.log" || status=1
      cp "$OUT/quickstart/report.md" "$OUT/report.md" 2>/dev/null ;;
    *) echo "unknown part $part: use tests, speed or pipeline" >&2; exit 2 ;;
  esac
done
exit $status
