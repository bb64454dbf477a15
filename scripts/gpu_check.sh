#!/usr/bin/env bash
# GPU checks in one go, for a lent CUDA machine (CI has none): the GPU tests and the precision tests, training
# speed per precision, inference latency per precision, and a two-minute run of train.py in auto precision that
# eval.py then scores on the GPU. Writes its logs to $OUT (default /tmp/segkit-gpu-check).
#   bash scripts/gpu_check.sh
# Packages missing on the machine can come along as wheels in .whl/ (installed into /tmp/site first).
set -uo pipefail
OUT=${OUT:-/tmp/segkit-gpu-check}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}
export NO_ALBUMENTATIONS_UPDATE=1 WANDB_MODE=offline PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, 'lightning', pl.__version__, 'bf16', torch.cuda.is_bf16_supported(including_emulation=False))" | tee -a "$OUT/gpu.txt"

python3 -m pytest -q -p no:cacheprovider -n 4 tests/test_gpu.py tests/test_precision.py 2>&1 | tee "$OUT/pytest.log" | tail -25

python3 scripts/train_speed.py --models unet_small deeplabv3plus_resnet50 pspnet_resnet50 --size 512 512 --batch 8 \
    --precisions 32-true bf16-mixed 16-mixed --device cuda --workers 6 --steps 30 2>&1 | grep '^|\|torch\|Error' | tee "$OUT/train_speed.md"

python3 src/benchmark.py "models=[unet_small,deeplabv3plus_resnet50,pspnet_resnet50]" height=512 width=1024 batch_size=8 \
    device=cuda precision=fp32 channels_last=true progress=false output="$OUT/latency_fp32.md" hydra.run.dir="$OUT/bench32" 2>&1 | tail -6
python3 src/benchmark.py "models=[unet_small,deeplabv3plus_resnet50,pspnet_resnet50]" height=512 width=1024 batch_size=8 \
    device=cuda precision=auto channels_last=true progress=false output="$OUT/latency_auto.md" hydra.run.dir="$OUT/benchauto" 2>&1 | tail -6

run=/tmp/segkit-gpu-run
python3 src/train.py experiment=synthetic_long trainer.accelerator=gpu trainer.precision=auto trainer.max_time=00:00:02:00 \
    data.dataset.height=256 data.dataset.width=256 data.num_workers=6 logger=csv callbacks.progress_bar=null \
    hydra.run.dir=$run 2>&1 | grep -i 'precision\|mIoU\|updates\|Error' | tail -12 | tee "$OUT/train.log"
python3 src/eval.py ckpt=$run device=cuda precision=auto split=val output_dir=$run/eval progress=false 2>&1 | tail -3 | tee -a "$OUT/train.log"
cp $run/result.json "$OUT/result.json" 2>/dev/null
echo "done"
