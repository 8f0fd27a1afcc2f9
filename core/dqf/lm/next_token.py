"""Next-token probabilities of a causal LM after a prompt, batched: scorers that read a few answer tokens.

Ask-LLM, DEITA and an LLM judge's expected score all score a row by the model's probabilities
for a few answer tokens at the first position after a prompt. Prompts are length-sorted (:func:`dqf.lm.length_batches`) and left-padded
(:func:`dqf.lm.collate` ``side="left"``) so every prompt ends at the last position; position ids
are counted from each row's first real token, so a row's numbers do not depend on its batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from dqf.errors import DqfError
from dqf.lm.batching import MAX_PADDING, collate, forward_mode, length_batches, pad_token_id

if TYPE_CHECKING:
    import numpy as np


def answer_token_ids(tokenizer, words: Sequence[str]) -> list[int]:
    """Ids of the single-token spellings of ``words`` (e.g. ``"yes"``, ``" yes"``), unknown tokens left out."""
    unk = tokenizer.unk_token_id
    ids: list[int] = []
    for w in words:
        enc = list(tokenizer(w, add_special_tokens=False, verbose=False)["input_ids"])
        if len(enc) == 1 and enc[0] != unk and enc[0] not in ids:
            ids.append(enc[0])
    return ids


def single_token_ids(tokenizer, tokens: Sequence[str]) -> list[int]:
    """The id of each of ``tokens`` (e.g. the digits "1".."6") as a token of its own; a DqfError naming the first
    one the tokenizer cannot write as one token."""
    ids = []
    for t in tokens:
        tid = tokenizer.convert_tokens_to_ids(t)
        if tid is None or tid == tokenizer.unk_token_id:
            enc = list(tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"])
            # the last piece of the encoding, when it is the token alone (e.g. after a word-start marker)
            tid = enc[-1] if enc and tokenizer.decode(enc[-1:]).strip() == t else None
        if tid is None or tid == tokenizer.unk_token_id:
            raise DqfError(f"the tokenizer has no single token for {t!r}")
        ids.append(int(tid))
    return ids


def next_token_logprobs(model, tokenizer, prompts: Sequence[Sequence[int]], token_sets: Sequence[Sequence[int]],
                        *, batch_size: int, device) -> "np.ndarray":
    """``out[i, j]`` = log of the total probability of ``token_sets[j]`` as the next token after ``prompts[i]``."""
    import numpy as np
    import torch

    pad_id = pad_token_id(tokenizer)
    out = np.full((len(prompts), len(token_sets)), np.nan, dtype=np.float64)
    todo = [i for i, p in enumerate(prompts) if len(p) > 0]
    sets = [torch.as_tensor(list(s), dtype=torch.long) for s in token_sets]
    with forward_mode(device):
        for pos in length_batches([len(prompts[i]) for i in todo], batch_size, max_padding=MAX_PADDING):
            idx = [todo[p] for p in pos]
            batch = collate([{"input_ids": list(prompts[i])} for i in idx], pad_id, side="left")
            mask = batch["attention_mask"]
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=batch["input_ids"].to(device), attention_mask=mask.to(device),
                           position_ids=position_ids.to(device)).logits[:, -1, :].float()
            logp = torch.log_softmax(logits, dim=-1).cpu()
            for j, s in enumerate(sets):
                out[idx, j] = torch.logsumexp(logp[:, s], dim=-1).double().numpy()
    return out


def fit_prompt(tokenizer, head: str, body: str, tail: str, limit: int, *, special: bool = True) -> tuple[list[int], bool]:
    """Token ids of ``head + body + tail``; if longer than ``limit``, ``body`` loses its end so the rest fits.

    Returns ``(ids, truncated)``. The whole text is tokenized in one piece when it fits, so ids
    match what a plain ``tokenizer(text)`` gives.
    """
    def enc(text, sp):
        return list(tokenizer(text, add_special_tokens=sp, verbose=False)["input_ids"])

    ids = enc(head + body + tail, special)
    if len(ids) <= limit:
        return ids, False
    h, t = enc(head, special), enc(tail, False)
    room = limit - len(h) - len(t)
    if room < 0:
        raise DqfError(f"the prompt without the example is {len(h) + len(t)} tokens, more than max_length={limit}")
    return h + enc(body, False)[:room] + t, True
