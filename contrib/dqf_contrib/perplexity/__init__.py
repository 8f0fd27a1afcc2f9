"""Entry point of the `perplexity` scorer (answer loss under a causal LM)."""

from dqf import hookimpl


@hookimpl
def dqf_register_scorers(register):
    from .perplexity import PerplexityScorer

    register(PerplexityScorer)
