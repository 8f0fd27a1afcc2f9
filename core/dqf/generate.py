"""Prompt formatting (Alpaca or chat template) and batched, left-padded, deterministic generation with a causal LM.

Public through ``dqf``: :func:`prepare_tokenizer`, :func:`prompt_text`, :func:`prompt_ids`,
:func:`response_ids`, :func:`truncate_left`, :func:`generate_answers`, and the Alpaca prompt
strings ``ALPACA_PROMPT_INPUT`` / ``ALPACA_PROMPT_NO_INPUT``.
"""

from __future__ import annotations

from typing import Callable, Sequence

from .batching import collate, length_batches
from .errors import DqfError

#: The Stanford Alpaca prompts, which MoDS trains and generates with.
ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)


def prepare_tokenizer(tokenizer) -> None:
    """Left padding for generation and a pad token; padded positions are masked, so reusing eos is harmless."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise DqfError("the model's tokenizer has neither a pad nor an eos token; cannot batch its prompts")
        tokenizer.pad_token = tokenizer.eos_token


def _question(instruction: str, input_: str) -> str:
    return f"{instruction}\n{input_}" if input_ else instruction


def prompt_text(tokenizer, instruction: str, input_: str, template: str) -> str:
    """The text the model sees before its answer."""
    if template == "alpaca":
        if input_:
            return ALPACA_PROMPT_INPUT.format(instruction=instruction, input=input_)
        return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)
    if not getattr(tokenizer, "chat_template", None):
        raise DqfError("prompt_template = 'chat' needs a tokenizer with a chat template; this one has none "
                       "(use prompt_template = 'alpaca')")
    return tokenizer.apply_chat_template([{"role": "user", "content": _question(instruction, input_)}],
                                         add_generation_prompt=True, tokenize=False)


def prompt_ids(tokenizer, instruction: str, input_: str, template: str) -> list[int]:
    text = prompt_text(tokenizer, instruction, input_, template)
    # A chat template writes its own special tokens (bos, role markers); the Alpaca text gets the tokenizer's.
    return tokenizer(text, add_special_tokens=(template == "alpaca"))["input_ids"]


def response_ids(tokenizer, instruction: str, input_: str, output: str, template: str, eos_id: int) -> list[int]:
    """Token ids of the answer as the model should produce it, end-of-turn marker included."""
    if template == "chat":
        messages = [{"role": "user", "content": _question(instruction, input_)}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": output}], tokenize=False)
        if full.startswith(prompt):
            # What the template writes after the answer (e.g. <|im_end|>) is what generation must learn to stop at.
            return tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
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
    row's next token follows its own last prompt token. ``on_batch(positions, texts)`` is
    called after every batch (to cache it).
    """
    import torch
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    eos_id = model.generation_config.eos_token_id
    if eos_id is None:
        eos_id = tokenizer.eos_token_id
    # Deterministic decoding: unset the sampling knobs a checkpoint may ship, so no warning and no sampling.
    config = GenerationConfig(max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
                              pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=tokenizer.bos_token_id)
    out: list[str | None] = [None] * len(prompts)
    model.eval()
    with torch.inference_mode():
        # Longest first, so a batch that does not fit in memory fails at once rather than at the end.
        for pos in length_batches([len(p) for p in prompts], batch_size, descending=True):
            batch = collate([{"input_ids": prompts[i]} for i in pos], pad_id, side="left")
            ids, mask, width = batch["input_ids"], batch["attention_mask"], batch["input_ids"].shape[1]
            seqs = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
            texts = [t.strip() for t in tokenizer.batch_decode(seqs[:, width:], skip_special_tokens=True)]
            for i, t in zip(pos, texts):
                out[i] = t
            if on_batch is not None:
                on_batch(pos, texts)
    return out  # type: ignore[return-value]
