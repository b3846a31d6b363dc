#!/usr/bin/env bash
# The GPU check in one line (DEVELOPERS.md): CIFAR-100 copied to data_gpu/ (git-ignored) travels with the tree.
set -euo pipefail; cd "$(dirname "$0")/.." && pip install -q -e . && python benchmarks/gpu_suite.py --out "${OUT:-benchmarks/results/gpu}" --data data_gpu "$@"
