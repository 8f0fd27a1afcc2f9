"""Length-sorted batching and padding for model plugins: the shared hot-path helpers behind scoring, embedding and generation."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

#: Most padding a forward pass may carry, as a fraction of its real tokens, where a scorer batches rows of
#: mixed lengths: past it a batch costs more than running its rows apart (the few long rows at the end of a sort).
MAX_PADDING = 0.25


@contextmanager
def forward_mode(device, *, grad: bool = False):
    """What every dqf forward pass runs under: ``torch.inference_mode`` (unless ``grad``), and on CUDA
    attention kept off cuDNN's kernel.

    cuDNN's scaled-dot-product attention builds an execution plan for each new input shape
    (about 5 ms of CPU time per call on an H200, 82 % of an embedding batch's time: bench/gpu.py
    --profile), and length-sorted batches and a growing key/value cache give nearly every call a
    new shape. Flash and memory-efficient attention have no per-shape set-up. Scoped to the
    ``with`` block, so nothing outside dqf's own forward passes changes.
    """
    import contextlib

    import torch

    with contextlib.ExitStack() as stack:
        if not grad:
            stack.enter_context(torch.inference_mode())
        if getattr(device, "type", device) == "cuda":
            try:
                from torch.nn.attention import SDPBackend, sdpa_kernel
            except ImportError:  # torch < 2.3 has no per-block choice (and no cuDNN attention either)
                pass
            else:
                stack.enter_context(sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                                                 SDPBackend.MATH]))
        yield


def pad_token_id(tokenizer) -> int:
    """The id to pad with: the tokenizer's pad token, else its eos token (padding is masked), else 0."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def length_batches(lengths: Sequence[int], batch_size: int, *, max_padding: float | None = None,
                   descending: bool = False) -> list[list[int]]:
    """Group positions for forward passes: sorted by length, at most ``batch_size`` each.

    Sorting keeps rows of similar length together, so each batch is padded only to its own
    longest row. ``max_padding`` (a fraction of the batch's real tokens) closes a batch early
    when the next row would add more padding than that: on a CPU a batch carrying mostly
    padding costs more than running its rows apart. ``descending`` puts the longest first
    (so an out-of-memory error shows up on the first batch, not the last).
    """
    import numpy as np

    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable").tolist()
    if descending:
        order = order[::-1]
    out: list[list[int]] = []
    cur: list[int] = []
    real = longest = 0
    for i in order:
        n = int(lengths[i])
        width = max(longest, n)
        full = len(cur) >= batch_size
        too_padded = max_padding is not None and cur and width * (len(cur) + 1) > (1 + max_padding) * (real + n)
        if cur and (full or too_padded):
            out.append(cur)
            cur, real, width = [], 0, n
        cur.append(i)
        real += n
        longest = width
    if cur:
        out.append(cur)
    return out


def collate(rows: Sequence[dict[str, Sequence[int]]], pad_id: int, *, side: str = "right") -> dict:
    """Pad token-id rows (``{"input_ids": [...], "token_type_ids": [...], ...}``) into long tensors.

    ``input_ids`` are padded with ``pad_id`` and other keys with 0; ``attention_mask`` is built
    from the lengths, so padding is never attended to. ``side="left"`` is for generation,
    where every prompt must end at the same position.
    """
    import torch

    width = max((len(r["input_ids"]) for r in rows), default=0)
    keys = [k for k in rows[0] if k != "attention_mask"] if rows else ["input_ids"]
    out = {k: torch.full((len(rows), width), pad_id if k == "input_ids" else 0, dtype=torch.long) for k in keys}
    out["attention_mask"] = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        if n == 0:
            continue
        span = slice(width - n, width) if side == "left" else slice(0, n)
        for k in keys:
            out[k][i, span] = torch.as_tensor(r[k], dtype=torch.long)
        out["attention_mask"][i, span] = 1
    return out
