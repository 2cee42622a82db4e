#!/usr/bin/env bash
# Every accelerator figure lmjax claims, in one call (experiments/gpu/README.md):
#   experiments/gpu/run_all.sh [--tiny] [--out DIR] [--items unet,hrnet,...] [--budget NAME=S]
# Without a GPU it runs the same rows at tiny sizes. PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" experiments/gpu/suite.py "$@"
