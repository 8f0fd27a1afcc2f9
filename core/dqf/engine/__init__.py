"""Running a recipe: the driver (``driver.py``) and its executors (``local.py``, ``ray.py`` over ``base.py``).

:func:`run_recipe` is the one place that knows both executors.
"""

from __future__ import annotations

from dqf.engine.driver import Engine, RunResult

__all__ = ["run_recipe", "Engine", "RunResult"]


def run_recipe(recipe, host, **kwargs) -> RunResult:
    """Run ``recipe`` with plugins from ``host`` on the executor its ``[engine]`` names; ``kwargs`` go to :class:`Engine`."""
    if recipe.model.engine.kind == "ray":
        from dqf.engine.ray import RayExecutor

        executor = RayExecutor(recipe)
    else:
        from dqf.engine.local import LocalExecutor

        executor = LocalExecutor(recipe)
    return Engine(recipe, host, executor, **kwargs).run()
