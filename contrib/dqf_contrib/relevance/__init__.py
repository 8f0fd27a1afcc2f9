"""Entry point of the `relevance` scorer (is the answer about this instruction at all?)."""

from dqf import hookimpl


@hookimpl
def dqf_register_scorers(register):
    from .relevance import RelevanceScorer

    register(RelevanceScorer)
