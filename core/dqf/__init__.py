"""dqf: choose instruction-tuning data. This module is the public API plugins may import."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import DataError, DqfError, PluginError, RecipeError
from .hookspecs import hookimpl
from .plugin import (BASE_COLUMNS, DERIVED_COLUMNS, FAILED_COLUMN, BudgetOptions, Embedder, Plugin, PluginOptions,
                     PluginSpec, Probe, Scorer, Selector, StepContext, row_texts)

__all__ = [
    "__version__",
    "hookimpl",
    "Plugin",
    "PluginOptions",
    "BudgetOptions",
    "Scorer",
    "Selector",
    "Probe",
    "Embedder",
    "PluginSpec",
    "StepContext",
    "BASE_COLUMNS",
    "DERIVED_COLUMNS",
    "FAILED_COLUMN",
    "row_texts",
    "length_batches",
    "collate",
    "kcenter_greedy",
    "kcenter_radius",
    "ModelRef",
    "ModelMixin",
    "resolve_model",
    "load_model",
    "load_tokenizer",
    "pick_device",
    "pick_dtype",
    "require",
    "answer_losses",
    "quantize_int8",
    "onednn_linears",
    "TrainConfig",
    "TrainResult",
    "TrainExample",
    "training_example",
    "training_examples",
    "add_lora",
    "train_causal_lm",
    "response_loss",
    "save_trained",
    "load_adapter",
    "merged_for_inference",
    "ALPACA_PROMPT_INPUT",
    "ALPACA_PROMPT_NO_INPUT",
    "prepare_tokenizer",
    "prompt_text",
    "prompt_ids",
    "response_ids",
    "truncate_left",
    "generate_answers",
    "DqfError",
    "DataError",
    "PluginError",
    "RecipeError",
    "build_plugin_manager",
    "load_recipe",
    "run",
    "validate",
    "missing_dependency",
]


def build_plugin_manager(local_modules=(), **kwargs):
    """Build a fresh :class:`dqf.plugins.PluginHost` (installed plugins plus ``local_modules``)."""
    from .plugins import build_plugin_manager as _build

    return _build(local_modules, **kwargs)


def load_recipe(path, *, host=None, overrides=None):
    """Validate the recipe at ``path``; returns ``(recipe, host)``. Raises :class:`RecipeError`."""
    from .recipe import load_recipe as _load

    factory = (lambda local: host) if host is not None else (lambda local: build_plugin_manager(local))
    return _load(path, factory, overrides=overrides)


def validate(path):
    """Validate a recipe without running anything; returns the validated :class:`dqf.recipe.Recipe`."""
    return load_recipe(path)[0]


def run(path, **kwargs):
    """Validate and run the recipe at ``path``; keyword arguments go to :class:`dqf.engine.Engine`."""
    from .engine import run_recipe

    recipe, host = load_recipe(path)
    return run_recipe(recipe, host, **kwargs)


def missing_dependency(module: str, extra: str | None = None, package: str | None = None, *,
                       user: str = "this plugin") -> DqfError:
    """The error a plugin (or ``user``, e.g. "the Ray engine") raises when an optional heavy library is not installed."""
    pkg = package or module
    hint = f"pip install 'dqf[{extra}]'" if extra else f"pip install {pkg}"
    return DqfError(f"{user} needs the Python package {pkg!r}, which is not installed; install it with: {hint}")


_LAZY = {
    "kcenter_greedy": "kcenter", "kcenter_radius": "kcenter",
    "length_batches": "batching", "collate": "batching",
    "ModelRef": "models", "ModelMixin": "models", "resolve_model": "models", "load_model": "models", "load_tokenizer": "models",
    "pick_device": "models", "pick_dtype": "models", "require": "models",
    "answer_losses": "lm",
    "quantize_int8": "quantize", "onednn_linears": "onednn",
    "TrainConfig": "finetune", "TrainResult": "finetune", "TrainExample": "finetune",
    "training_example": "finetune", "training_examples": "finetune", "add_lora": "finetune",
    "train_causal_lm": "finetune", "response_loss": "finetune", "save_trained": "finetune",
    "load_adapter": "finetune", "merged_for_inference": "finetune",
    "ALPACA_PROMPT_INPUT": "generate", "ALPACA_PROMPT_NO_INPUT": "generate", "prepare_tokenizer": "generate",
    "prompt_text": "generate", "prompt_ids": "generate", "response_ids": "generate", "truncate_left": "generate",
    "generate_answers": "generate",
}


def __getattr__(name):  # numeric and model helpers load on first use so `import dqf` stays fast
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'dqf' has no attribute {name!r}")
