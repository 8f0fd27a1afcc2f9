"""Batched, left-padded, deterministic generation with a causal LM, and the prompt and answer token ids it uses."""

from __future__ import annotations

from typing import Callable, Sequence

from dqf.lm.batching import collate, forward_mode, length_batches
from dqf.errors import DqfError
from dqf.lm.prompts import alpaca_prompt, chat_answer, chat_prompt


def prepare_tokenizer(tokenizer) -> None:
    """Left padding for generation and a pad token; padded positions are masked, so reusing eos is harmless."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise DqfError("the model's tokenizer has neither a pad nor an eos token; cannot batch its prompts")
        tokenizer.pad_token = tokenizer.eos_token


def prompt_text(tokenizer, instruction: str, input_: str, template: str) -> str:
    """The text the model sees before its answer: the Alpaca prompt, or the question in the chat template."""
    if template == "alpaca":
        return alpaca_prompt(instruction, input_)
    return chat_prompt(tokenizer, instruction, input_)


def prompt_ids(tokenizer, instruction: str, input_: str, template: str) -> list[int]:
    text = prompt_text(tokenizer, instruction, input_, template)
    # A chat template writes its own special tokens (bos, role markers); the Alpaca text gets the tokenizer's.
    return tokenizer(text, add_special_tokens=(template == "alpaca"))["input_ids"]


def response_ids(tokenizer, instruction: str, input_: str, output: str, template: str, eos_id: int) -> list[int]:
    """Token ids of the answer as the model should produce it, end-of-turn marker included."""
    if template == "chat":
        rest = chat_answer(tokenizer, instruction, input_, output)
        if rest is not None:
            # What the template writes after the answer (e.g. <|im_end|>) is what generation must learn to stop at.
            return tokenizer(rest, add_special_tokens=False)["input_ids"]
    return tokenizer(output, add_special_tokens=False)["input_ids"] + [eos_id]


def truncate_left(ids: list[int], max_length: int | None) -> tuple[list[int], bool]:
    """Keep the last ``max_length`` tokens: the end of the prompt (the response marker) must survive."""
    if max_length is None or len(ids) <= max_length:
        return ids, False
    return ids[-max_length:], True


def generate_answers(model, tokenizer, prompts: Sequence[list[int]], *, max_new_tokens: int, num_beams: int = 1,
             batch_size: int = 8, on_batch: Callable[[list[int], list[str]], None] | None = None) -> list[str]:
    """Greedy (or beam) answers to tokenized ``prompts``, in input order; only the new tokens, decoded and stripped.

    Prompts are sorted by length so each batch pads little, and padded on the left so every
    row's next token follows its own last prompt token. Greedy decoding on a model with a plain
    key/value cache (decoder-only transformers) runs dqf's own loop (:func:`_greedy`): the
    prompts of a batch go through the model in groups of similar length, so the prompt pass
    carries almost no padding, and a row leaves the batch as soon as it ends, so short answers
    do not ride along until the longest one finishes. Its tokens are those of transformers'
    greedy ``generate``. Beam search, and models with other caches, use ``model.generate``.
    ``on_batch(positions, texts)`` is called after every batch (to cache it).
    """
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    eos_id = model.generation_config.eos_token_id
    if eos_id is None:
        eos_id = tokenizer.eos_token_id
    # Deterministic decoding: unset the sampling knobs a checkpoint may ship, so no warning and no sampling.
    config = GenerationConfig(max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
                              pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=tokenizer.bos_token_id)
    own_loop = num_beams == 1 and _plain_kv_cache(model)
    eos_ids = set(eos_id if isinstance(eos_id, (list, tuple)) else [] if eos_id is None else [eos_id])
    out: list[str | None] = [None] * len(prompts)
    model.eval()
    with forward_mode(device):
        # Longest first, so a batch that does not fit in memory fails at once rather than at the end.
        for pos in length_batches([len(p) for p in prompts], batch_size, descending=True):
            rows = [prompts[i] for i in pos]
            if own_loop:
                new = _greedy(model, rows, pad_id, eos_ids, max_new_tokens, device)
            else:
                batch = collate([{"input_ids": r} for r in rows], pad_id, side="left")
                seqs = model.generate(input_ids=batch["input_ids"].to(device),
                                      attention_mask=batch["attention_mask"].to(device), generation_config=config)
                new = seqs[:, batch["input_ids"].shape[1]:]
            texts = [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
            for i, t in zip(pos, texts):
                out[i] = t
            if on_batch is not None:
                on_batch(pos, texts)
    return out  # type: ignore[return-value]


def _cache_kwarg(model) -> str:
    """transformers 5 renamed ``past_key_values`` to ``cache`` (the old name warns, then goes in 6.0)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _plain_kv_cache(model) -> bool:
    """True for decoder-only models whose cache is one growing key/value pair per layer (what :func:`_greedy`
    knows how to build and shrink); sliding-window, recurrent and encoder-decoder models are not."""
    import inspect

    try:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        layers = DynamicCache(config=model.config).layers
    except Exception:  # older transformers, or a config the cache cannot read
        return False
    params = inspect.signature(model.forward).parameters
    return (bool(layers) and all(type(layer) is DynamicLayer for layer in layers)
            and not getattr(model.config, "is_encoder_decoder", False)
            and {"attention_mask", "position_ids", "logits_to_keep"} <= set(params))


def _greedy(model, rows: list[list[int]], pad_id: int, eos_ids: set[int], max_new_tokens: int, device) -> list[list[int]]:
    """Greedy continuations of ``rows`` (longest first), eos included as ``generate`` returns it.

    One forward per new token for the rows still going: a row that emits an eos token is
    dropped from the batch and its cache. The next token is the argmax of float32 logits,
    as in transformers' greedy search.
    """
    import torch

    kw = _cache_kwarg(model)
    cache = _prefill(model, rows, pad_id, device, kw)
    width = cache.get_seq_length()
    # Attention mask over cached tokens plus the one being fed: row i's last len(i) columns are real.
    mask = torch.zeros((len(rows), width + 1), dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        mask[i, width + 1 - len(r):] = 1
    step_in = torch.tensor([[r[-1]] for r in rows], device=device)
    position = torch.tensor([[len(r) - 1] for r in rows], device=device)
    alive = list(range(len(rows)))
    new: list[list[int]] = [[] for _ in rows]
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device)
    for _ in range(max_new_tokens):
        logits = model(input_ids=step_in, attention_mask=mask, position_ids=position, use_cache=True,
                       logits_to_keep=1, **{kw: cache}).logits[:, -1]
        token = logits.float().argmax(-1)
        for j, t in zip(alive, token.tolist()):
            new[j].append(t)
        going = ~torch.isin(token, eos) if len(eos) else torch.ones_like(token, dtype=torch.bool)
        if not bool(going.all()):
            keep = going.nonzero().squeeze(-1)
            if keep.numel() == 0:
                break
            cache.batch_select_indices(keep)
            alive = [alive[k] for k in keep.tolist()]
            token, mask, position = token[keep], mask[keep], position[keep]
        step_in = token[:, None]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        position = position + 1
    return new


#: What one extra forward call costs, in prompt tokens, when splitting a batch's prompt pass into groups.
#: Measured on 2 CPU cores (SmolLM2-135M); an accelerator runs a small batch in the time it takes to launch
#: its kernels, so there padding is nearly free and a call dear (bench/gpu.py measures both on a GPU).
CALL_COST_TOKENS = {"cpu": 32, "accelerator": 8192}


def call_cost_tokens(device) -> int:
    return CALL_COST_TOKENS["cpu" if getattr(device, "type", device) == "cpu" else "accelerator"]


def prefill_groups(lengths: Sequence[int], call_cost: int = CALL_COST_TOKENS["cpu"]) -> list[tuple[int, int]]:
    """Split ``lengths`` (sorted, longest first) into runs ``[start, end)`` that minimise padded tokens plus
    ``call_cost`` per run: each run is padded to its first (longest) row."""
    n = len(lengths)
    best = [0] + [None] * n  # best[j]: cheapest split of the first j rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            c = best[i] + lengths[i] * (j - i) + call_cost
            if best[j] is None or c < best[j]:
                best[j], cut[j] = c, i
    runs, j = [], n
    while j > 0:
        runs.append((cut[j], j))
        j = cut[j]
    return runs[::-1]


def _prefill(model, rows: list[list[int]], pad_id: int, device, cache_kwarg: str):
    """The key/value cache of every prompt but its last token (rows longest first), computed in groups of
    similar length and laid out as one left-padded batch.

    A left-padded batch's prompt pass spends as much compute on padding as on the shortest
    prompts' tokens (on 16 Alpaca prompts of 34-79 tokens, 36 % of it). The cache each row gets
    is the one it would get in the padded batch -- same positions, padding masked -- so
    :func:`_greedy` continues from it with the last prompt token.
    """
    from transformers import DynamicCache

    lengths = [len(r) - 1 for r in rows]
    width = lengths[0]
    if width < 1:
        return DynamicCache(config=model.config)
    keys: list = []
    values: list = []
    cost = call_cost_tokens(device)
    for start, end in prefill_groups([n for n in lengths if n > 0], cost):  # one-token prompts have nothing cached
        part = collate([{"input_ids": r[:-1]} for r in rows[start:end]], pad_id, side="left")
        ids, mask = part["input_ids"].to(device), part["attention_mask"].to(device)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        cache = DynamicCache(config=model.config)
        model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
              **{cache_kwarg: cache})
        w = ids.shape[1]
        for li, layer in enumerate(cache.layers):
            if not keys or len(keys) <= li:
                shape = (len(rows),) + tuple(layer.keys.shape[1:2]) + (width,) + tuple(layer.keys.shape[3:])
                keys.append(layer.keys.new_zeros(shape))
                values.append(layer.values.new_zeros(shape))
            keys[li][start:end, :, width - w:] = layer.keys
            values[li][start:end, :, width - w:] = layer.values
    return DynamicCache(list(zip(keys, values)), config=model.config)
