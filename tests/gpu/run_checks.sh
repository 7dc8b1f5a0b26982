#!/usr/bin/env bash
# The GPU checks of trl-sso (tests/gpu/README.md): bf16 parity, vLLM backend, FSDP2, QLoRA, step time.
# Usage: bash tests/gpu/run_checks.sh          # on a machine with one GPU, under 10 minutes
#        bash tests/gpu/run_checks.sh --cpu    # dry run on CPU
set -uo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1 PYTHONUNBUFFERED=1
exec python tests/gpu/checks.py "$@"
