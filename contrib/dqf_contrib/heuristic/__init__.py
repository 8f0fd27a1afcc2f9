"""Entry point of the `heuristic` scorer (cheap text statistics, no model)."""

from dqf import hookimpl


@hookimpl
def dqf_register_scorers(register):
    from .heuristic import HeuristicScorer

    register(HeuristicScorer)
