"""Entry point of the `deita-complexity` and `deita-quality` scorers (DEITA's LLM scorers)."""

from dqf import hookimpl


@hookimpl
def dqf_register_scorers(register):
    from .complexity import DeitaComplexityScorer
    from .quality import DeitaQualityScorer

    register(DeitaComplexityScorer)
    register(DeitaQualityScorer)
