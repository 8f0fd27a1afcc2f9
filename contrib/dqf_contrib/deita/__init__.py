"""Entry point of the `deita-complexity`, `deita-quality` and `deita-score` scorers (DEITA's LLM scorers)."""

from dqf import hookimpl


@hookimpl
def dqf_register_scorers(register):
    from .complexity import DeitaComplexityScorer
    from .quality import DeitaQualityScorer
    from .score import DeitaScoreScorer

    register(DeitaComplexityScorer)
    register(DeitaQualityScorer)
    register(DeitaScoreScorer)
