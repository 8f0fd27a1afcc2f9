"""dqf: choose instruction-tuning data. This module is the plugin contract, plus run / validate / load_recipe.

Everything a plugin needs to be a plugin lives here; the model and selection toolkits are the
public submodules :mod:`dqf.lm` and :mod:`dqf.select`, and :mod:`dqf.testing` helps test plugins.
Every other module is private.
"""

from __future__ import annotations

from dqf._version import __version__
from dqf.errors import DataError, DqfError, PluginError, RecipeError, missing_dependency, require
from dqf.hookspecs import hookimpl
from dqf.plugin import (BASE_COLUMNS, DERIVED_COLUMNS, FAILED_COLUMN, Backend, BudgetOptions, Embedder, Plugin,
                        PluginOptions, PluginSpec, Probe, Scorer, Selector, StepContext, Workspace, row_texts)
from dqf.store.atomic import atomic_path

__all__ = [
    "__version__",
    "hookimpl",
    "Plugin",
    "Scorer",
    "Selector",
    "Probe",
    "Embedder",
    "Backend",
    "PluginOptions",
    "BudgetOptions",
    "PluginSpec",
    "StepContext",
    "Workspace",
    "BASE_COLUMNS",
    "DERIVED_COLUMNS",
    "FAILED_COLUMN",
    "row_texts",
    "atomic_path",
    "DqfError",
    "DataError",
    "PluginError",
    "RecipeError",
    "require",
    "missing_dependency",
    "load_recipe",
    "validate",
    "run",
]


def load_recipe(path, *, host=None, overrides=None):
    """Validate the recipe at ``path`` against the installed plugins (or ``host``); returns ``(recipe, host)``.

    ``host`` is a :class:`dqf.registry.PluginHost`; by default one is built from the installed
    plugins and the recipe's own ``plugins`` modules. Raises :class:`RecipeError` listing every problem.
    """
    from dqf.recipe import load_recipe as _load
    from dqf.registry import build_plugin_manager

    factory = (lambda local: host) if host is not None else build_plugin_manager
    return _load(path, factory, overrides=overrides)


def validate(path):
    """Validate a recipe without running anything; returns the validated recipe."""
    return load_recipe(path)[0]


def run(path, **kwargs):
    """Validate and run the recipe at ``path``; keyword arguments go to the engine (``run_dir``, ``limit``, ...)."""
    from dqf.engine import run_recipe

    recipe, host = load_recipe(path)
    return run_recipe(recipe, host, **kwargs)
