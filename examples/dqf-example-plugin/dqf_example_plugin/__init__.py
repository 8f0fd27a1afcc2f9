"""Entry point of the example `keyword` scorer.

dqf imports this module through the ``dqf`` entry point declared in pyproject.toml and calls
the hook implementations below. Keep this module light: import plugin classes inside the hook.
"""

from dqf import hookimpl


@hookimpl
def dqf_register_scorers(register):
    from .keyword import KeywordScorer

    register(KeywordScorer)
