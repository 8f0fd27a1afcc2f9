"""What a plugin hands its LM backend (:class:`dqf.Backend`): the model to open, and the check that a backend can do
what the plugin will ask of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dqf.errors import DqfError

if TYPE_CHECKING:
    import numpy as np


@dataclass
class ModelSource:
    """The model a backend opens.

    ``path`` is a folder of Hugging Face weights (a base model, or a full fine-tune; see
    :func:`dqf.lm.weights_folder` for GGUF files); ``adapter`` a LoRA adapter folder (peft) to apply
    on top — vLLM serves it unmerged; ``tokenizer`` the tokenizer the caller renders prompts with
    (after :func:`dqf.lm.prepare_tokenizer`), so every backend decodes as the caller encodes;
    ``identity`` what names these weights in a cache key; ``loaded`` a model already in this
    process's memory (a model just trained), which the in-process backend uses instead of loading.
    """

    path: str
    tokenizer: Any
    adapter: str | None = None
    identity: dict = field(default_factory=dict)
    loaded: Any = None


def require_capabilities(backend, needs: set[str], who: str) -> None:
    """A ``DqfError`` naming what ``backend`` cannot do for ``who`` (checked at validation)."""
    missing = sorted(needs - set(backend.capabilities))
    if missing:
        can = ", ".join(sorted(backend.capabilities)) or "nothing"
        raise DqfError(f"{who}: backend {backend.name!r} cannot do {', '.join(missing)} (it can: {can})")


def losses_from_prompt_logprobs(prompts, answers, prompt_logprobs) -> "np.ndarray":
    """Mean NLL per answer token of each ``answers[i]`` after ``prompts[i]``, for a backend that can score a
    sequence's own tokens: ``prompt_logprobs(sequences)`` gives, per token-id sequence, each token's log-probability
    given those before it (``None`` for the first) — or ``None`` for a sequence it could not score. As
    :func:`dqf.lm.answer_losses`: prompt tokens are context only; with no prompt the first answer token is not
    scored; NaN where nothing is scored."""
    import numpy as np

    out = np.full(len(prompts), np.nan)
    todo = [i for i in range(len(prompts)) if answers[i] and len(prompts[i]) + len(answers[i]) >= 2]
    for i, lp in zip(todo, prompt_logprobs([list(prompts[i]) + list(answers[i]) for i in todo])):
        scored = [v for v in (lp or [])[max(len(prompts[i]), 1):] if v is not None]
        if scored:
            out[i] = -float(np.mean(scored))
    return out


def next_token_from_prompt_logprobs(prompts, token_sets, prompt_logprobs) -> "np.ndarray":
    """``out[i, j]``: log of the total probability of ``token_sets[j]`` right after ``prompts[i]``, read by
    appending each candidate token to the prompt and scoring it as a prompt token — exact for every token (a
    top-k list would miss unlikely ones) and cheap where the engine caches the shared prefix."""
    import numpy as np

    cands = sorted({t for s in token_sets for t in s})
    out = np.full((len(prompts), len(token_sets)), np.nan)
    todo = [i for i, p in enumerate(prompts) if len(p) > 0]
    lps = prompt_logprobs([list(prompts[i]) + [t] for i in todo for t in cands])
    for k, i in enumerate(todo):
        got = lps[k * len(cands):(k + 1) * len(cands)]
        if any(g is None for g in got):
            continue
        by = {t: g[-1] for t, g in zip(cands, got)}
        for j, s in enumerate(token_sets):
            out[i, j] = np.logaddexp.reduce([by[t] for t in s]) if s else np.nan
    return out


def off_process(backend) -> "Any":
    """``backend`` when it is not the in-process ``transformers`` one (whose numbers are a local run's), else None."""
    return None if backend is None or backend.name == "transformers" else backend

