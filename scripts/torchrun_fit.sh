#!/bin/bash
# Train an rsseg config on several nodes with torchrun. Run this on every node:
#   NODES=2 GPUS_PER_NODE=4 MASTER=node01 scripts/torchrun_fit.sh experiments/d2ls/potsdam.yaml
# Lightning reads the variables torchrun sets (TorchElasticEnvironment).
set -euo pipefail

CONFIG=${1:-experiments/d2ls/potsdam.yaml}
NODES=${NODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-4}
MASTER=${MASTER:-localhost}
PORT=${PORT:-29500}

export WANDB_MODE=${WANDB_MODE:-offline}

torchrun --nnodes "$NODES" --nproc-per-node "$GPUS_PER_NODE" \
  --rdzv-backend c10d --rdzv-endpoint "$MASTER:$PORT" --rdzv-id "rsseg-${CONFIG//\//-}" \
  -m rsseg.cli fit --config "$CONFIG" \
  --trainer.num_nodes "$NODES" --trainer.devices "$GPUS_PER_NODE" --trainer.strategy ddp
