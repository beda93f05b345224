#!/bin/bash
# Train an rsseg config on several nodes with torchrun (no scheduler needed). Run the same command on every node:
#   NODES=2 GPUS_PER_NODE=4 MASTER=node01 scripts/torchrun_fit.sh experiments/d2ls/potsdam.yaml [more fit arguments]
# One node (NODES=1, the default) works too, though `rsseg fit --trainer.devices N` needs no launcher there.
# Lightning detects torchrun (TorchElasticEnvironment) from the variables it sets and leaves the processes to it;
# num_nodes × devices must equal torchrun's world size, which the flags below guarantee.
# torchrun runs a Python file or module: `-m rsseg.cli` is the `rsseg` console script's entry point.
set -euo pipefail

CONFIG=${1:-experiments/d2ls/potsdam.yaml}  # first argument: the config; the rest go to `rsseg fit`
shift $(( $# > 0 ? 1 : 0 ))
NODES=${NODES:-1}                 # number of nodes (each runs this script)
GPUS_PER_NODE=${GPUS_PER_NODE:-4} # processes (GPUs) per node
MASTER=${MASTER:-localhost}       # host name of the node running the c10d rendezvous (any of them, the same everywhere)
PORT=${PORT:-29500}               # a free TCP port on MASTER
RUN_ID=${RUN_ID:-rsseg-${CONFIG//\//-}}  # rendezvous id: the same on every node, unique per job
STRATEGY=${STRATEGY:-ddp}         # ddp_find_unused_parameters_true for LAVT/DANet; fsdp (see docs/multi_gpu.md)
VENV=${VENV:-.venv}

if [[ -f "$VENV/bin/activate" ]]; then source "$VENV/bin/activate"; fi
export WANDB_MODE=${WANDB_MODE:-offline}  # only rank 0 logs; `wandb sync` later where nodes lack internet

torchrun --nnodes "$NODES" --nproc-per-node "$GPUS_PER_NODE" \
  --rdzv-backend c10d --rdzv-endpoint "$MASTER:$PORT" --rdzv-id "$RUN_ID" \
  -m rsseg.cli fit --config "$CONFIG" \
  --trainer.num_nodes "$NODES" --trainer.devices "$GPUS_PER_NODE" --trainer.strategy "$STRATEGY" "$@"
