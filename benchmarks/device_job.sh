#!/usr/bin/env bash
# One lent-GPU command that retrains one member of the family from its recipe and brings it back.
#
# A task that draws a device gets 15 minutes of it in all, starts included, and 10 per command, so
# everything happens in one command: GPU facts, a throughput probe, then the recipe's three stages
# (VQ-VAE with its refine stage, prior, decoder) with the recipe's step counts times SCALE, each
# stage stopped after its share of MINUTES (a stopped stage still writes its weights). The weights
# and logs land in $OUT/NAME/ (each file well under the 16 MiB a returned file may have).
#
# Here, once (the training crops travel in a git-ignored folder of the checkout):
#     mkdir -p data && cp -r ../shared/data/train data/
# Then, with the device tool:
#     run(command="bash benchmarks/device_job.sh vqc-4 20 8", carry=["data"], timeout_s=590)
# A stronger autoencoder than the recipe's (any VQVAE2Config field, JSON; the 16 MB budget then
# needs the VQ-VAEs in 8 bits, package_models.py --int8-vqvae):
#     run(command="VQVAE_CONFIG='{\"channels\": 128, \"res_channels\": 64}' bash benchmarks/device_job.sh vqc-4 20 8", ...)
# Dry run on this CPU (tiny budget, checks the plumbing, not the result):
#     OUT=/tmp/out DEVICE=cpu bash benchmarks/device_job.sh vqc-4 0.01 0.6
# Afterwards: benchmarks/package_models.py on the returned model.safetensors, then the Kodak
# benchmark (benchmarks/README.md); compare with the shipped card before replacing anything.
set -euo pipefail
name=${1:?usage: device_job.sh NAME SCALE MINUTES}
scale=${2:?usage: device_job.sh NAME SCALE MINUTES}
minutes=${3:?usage: device_job.sh NAME SCALE MINUTES}
device=${DEVICE:-cuda}
out=${OUT:?OUT must name the folder that comes back}/$name
runs=${RUNS:-runs/device}/$name
mkdir -p "$out" "$runs"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export VQCODEC_DATA=${VQCODEC_DATA:-$PWD/data}
python=${PYTHON:-python3}
workers=$(( $(nproc) > 4 ? $(nproc) - 2 : 1 ))
# Stage shares of the minutes: the VQ-VAE sets everything downstream, the prior is the rate.
share() { "$python" -c "print(round($minutes * $1, 2))"; }

{
  date -u
  if [ "$device" = cuda ]; then nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; fi
  "$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  "$python" benchmarks/train_throughput.py --config "$name" --batch-size 64 --crop 128 --steps 5 \
    --devices "$device" --out "$out/throughput.json"
} 2>&1 | tee "$out/job.log"

for stage in vqvae prior decoder; do
  case $stage in vqvae) part=0.5 ;; prior) part=0.35 ;; decoder) part=0.15 ;; esac
  echo "== $stage: at most $(share $part) minutes" | tee -a "$out/job.log"
  "$python" benchmarks/train_family.py "$name" --out "$runs" --device "$device" --workers "$workers" \
    --scale "$scale" --stage "$stage" --max-minutes "$(share $part)" --vqvae-config "${VQVAE_CONFIG:-{\}}" 2>&1 | tee -a "$out/job.log" | tail -n 3
done

# In fp16, so that a wider VQ-VAE's files stay under the 16 MiB a returned file may have.
"$python" benchmarks/half_weights.py "$runs/prior/model.safetensors" "$out/model.safetensors"
if [ -f "$runs/decoder/model.safetensors" ]; then
  "$python" benchmarks/half_weights.py "$runs/decoder/model.safetensors" "$out/decoder.safetensors"
fi
for log in "$runs"/*/*log.jsonl; do
  if [ -f "$log" ]; then cp "$log" "$out/$(basename "$log")"; fi
done
ls -l "$out" | tee -a "$out/job.log"
