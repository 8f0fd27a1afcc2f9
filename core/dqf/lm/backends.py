"""What a plugin hands its LM backend (:class:`dqf.Backend`): the model to open, and the check that a backend can do
what the plugin will ask of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dqf.errors import DqfError


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
