"""Causal-LM answer losses: the shared hot path of perplexity-style scorers (perplexity, IFD)."""

from __future__ import annotations

from typing import Sequence

from dqf.lm.batching import MAX_PADDING, collate, forward_mode, length_batches, pad_token_id


def answer_losses(model, tokenizer, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], *,
                  batch_size: int = 8, device=None):
    """Mean negative log-likelihood (nats per token) of each answer given its prompt, under a causal LM.

    Row ``i`` is the token sequence ``prompts[i] + answers[i]``; the loss is averaged over the
    answer tokens only, each predicted from everything before it (prompt tokens are context,
    exactly as ``labels = -100`` on the prompt would make ``model(..., labels=...).loss``). When
    the prompt is empty the first answer token has nothing to be predicted from and is not
    scored. Rows with no scored token (empty answer, or a one-token answer with no prompt) get
    ``NaN``.

    Rows are sorted by length and run ``batch_size`` at a time, right-padded with
    :func:`dqf.lm.collate` only to their own longest row; padding is masked, so a row's loss does
    not depend on which rows share its batch. Runs under ``torch.inference_mode``; the loss is
    computed in float32 whatever the model's dtype. Returns a float64 numpy array in input order.
    """
    import numpy as np
    import torch

    if len(prompts) != len(answers):
        raise ValueError(f"answer_losses: {len(prompts)} prompts but {len(answers)} answers")
    if device is None:
        device = next(model.parameters()).device
    pad_id = pad_token_id(tokenizer)
    out = np.full(len(prompts), np.nan, dtype=np.float64)
    rows = [list(p) + list(a) for p, a in zip(prompts, answers)]
    starts = [len(p) for p in prompts]
    todo = [i for i, r in enumerate(rows) if len(r) >= 2 and len(answers[i]) > 0]
    if not todo:
        return out
    with forward_mode(device):
        for pos in length_batches([len(rows[i]) for i in todo], batch_size, max_padding=MAX_PADDING):
            idx = [todo[j] for j in pos]
            batch = collate([{"input_ids": rows[i]} for i in idx], pad_id, side="right")
            ids, mask = batch["input_ids"], batch["attention_mask"]
            labels = torch.full_like(ids, -100)
            for b, i in enumerate(idx):
                labels[b, max(starts[i], 1):len(rows[i])] = ids[b, max(starts[i], 1):len(rows[i])]
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            target = labels[:, 1:].to(logits.device)
            scored = target != -100
            nll = torch.nn.functional.cross_entropy(logits[:, :-1][scored].float(), target[scored], reduction="none")
            which = scored.nonzero()[:, 0]
            total = torch.zeros(len(idx), dtype=torch.float64, device=logits.device)
            total.index_add_(0, which, nll.double())
            count = scored.sum(dim=1).double()
            out[idx] = (total / count).cpu().numpy()
    return out
