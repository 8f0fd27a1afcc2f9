"""The prompt texts every model-aware step shares: the MoDS question, the Alpaca prompts, chat-template turns."""

from __future__ import annotations

from dqf.errors import DqfError

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
#: Between instruction and input in the MoDS question (and in ``row_texts(rows, "prompt")``).
QUESTION_SEPARATOR = "\n"


def question(instruction: str, input_: str) -> str:
    """The MoDS question of a row: the instruction, then a newline and the input when the input is non-empty."""
    return f"{instruction}{QUESTION_SEPARATOR}{input_}" if input_ else instruction


#: FastChat's vicuna_v1.1 conversation template, which DEITA renders a conversation with before embedding it
#: (deita/selection/embedder: conv_template "vicuna_v1.1"): the system prompt, then "USER: q ASSISTANT: a</s>" turns.
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
                 "detailed, and polite answers to the user's questions.")


def vicuna_conversation(turns) -> str:
    """``turns`` (``(user, assistant)`` pairs) as FastChat's vicuna_v1.1 template writes them (separator style
    ADD_COLON_TWO: a space after each user message, ``</s>`` after each assistant message)."""
    out = VICUNA_SYSTEM + " "
    for user, assistant in turns:
        out += f"USER: {user} " + (f"ASSISTANT: {assistant}</s>" if assistant else "ASSISTANT:")
    return out


def turn_pairs(turns) -> list[tuple[str, str]]:
    """``(query, response)`` for each user turn of a conversation (a list of ``{role, content}``).

    The response is the first assistant turn after the query and before the next user turn, or
    ``""`` when there is none (as DEITA scores a conversation's last, unanswered query). System and
    tool turns are skipped; no turn sees the turns before it (DEITA scores each pair on its own).
    """
    pairs: list[tuple[str, str]] = []
    answered = True
    for t in turns:
        role, content = t["role"], t["content"] or ""
        if role == "user":
            pairs.append((content, ""))
            answered = False
        elif role == "assistant" and not answered:
            pairs[-1] = (pairs[-1][0], content)
            answered = True
    return pairs


def question_expr():
    """:func:`question` as a polars expression over the ``instruction`` and ``input`` columns."""
    import polars as pl

    return (pl.when(pl.col("input").str.len_chars() > 0)
            .then(pl.concat_str([pl.col("instruction"), pl.col("input")], separator=QUESTION_SEPARATOR))
            .otherwise(pl.col("instruction")))


def alpaca_prompt(instruction: str, input_: str) -> str:
    """The Alpaca prompt of a row, ending in ``### Response:``."""
    if input_:
        return ALPACA_PROMPT_INPUT.format(instruction=instruction, input=input_)
    return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)


def plain_prompt(instruction: str, input_: str) -> str:
    """Superfiltering's prompt: ``"{instruction}\\n{input}\\n"``, or ``"{instruction}\\n"`` with no input."""
    return f"{instruction}\n{input_}\n" if input_ else f"{instruction}\n"


def encode(tokenizer, text: str, *, special: bool) -> list[int]:
    """Token ids of ``text``, with the tokenizer's special tokens (a BOS, ...) when ``special``."""
    return list(tokenizer(text, add_special_tokens=special, verbose=False)["input_ids"])


def encode_pair(tokenizer, prefix: str, text: str, *, special: bool = True) -> tuple[list[int], list[int]]:
    """``prefix + text`` tokenized as one string (as the reference IFD/perplexity code does), split where ``text``
    begins: ``(prefix ids, text ids)``, whose concatenation is the one-string tokenization.

    A token that straddles the boundary (BPE merging the prefix's last characters with the text's
    first) belongs to the prefix, as counting the prefix's own tokens would have it. The split comes
    from the tokenizer's character offsets; a tokenizer without them (a slow one) splits at
    ``len(encode(prefix))``, the references' rule.
    """
    boundary = len(prefix)
    try:
        enc = tokenizer(prefix + text, add_special_tokens=special, return_offsets_mapping=True, verbose=False)
        ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    except (NotImplementedError, TypeError, ValueError):
        ids = encode(tokenizer, prefix + text, special=special)
        cut = min(len(encode(tokenizer, prefix, special=special)), len(ids))  # "" gives the leading specials
        return ids[:cut], ids[cut:]
    cut = len(ids)
    for i, (start, end) in enumerate(offsets):
        if end > start and start >= boundary:
            cut = i
            break
    return ids[:cut], ids[cut:]


def _user_turn(tokenizer, instruction: str, input_: str, option: str, instead: str) -> list[dict]:
    if not getattr(tokenizer, "chat_template", None):
        raise DqfError(f"{option} = 'chat' needs a tokenizer with a chat template; this one has none "
                       f"(use {option} = {instead})")
    return [{"role": "user", "content": question(instruction, input_)}]


def chat_prompt(tokenizer, instruction: str, input_: str, *, option: str = "prompt_template",
                instead: str = "'alpaca'") -> str:
    """The question as a user turn in the tokenizer's chat template, with the assistant's generation prompt.

    ``option`` and ``instead`` name the plugin option that chose the chat template and its other
    values, for the error when the tokenizer has no template.
    """
    messages = _user_turn(tokenizer, instruction, input_, option, instead)
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def chat_answer(tokenizer, instruction: str, input_: str, output: str, *, option: str = "prompt_template",
                instead: str = "'alpaca'") -> str | None:
    """What the chat template writes after :func:`chat_prompt` for the answer ``output`` (end-of-turn marker
    included), or ``None`` when the template's text with the answer does not start with the prompt."""
    messages = _user_turn(tokenizer, instruction, input_, option, instead)
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": output}], tokenize=False)
    return full[len(prompt):] if full.startswith(prompt) else None
