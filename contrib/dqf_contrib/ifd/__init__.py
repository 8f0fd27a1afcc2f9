"""Entry point of the `ifd` scorer (Instruction-Following Difficulty, Cherry LLM / Superfiltering)."""

from dqf import hookimpl


@hookimpl
def dqf_register_scorers(register):
    from .ifd import IfdScorer

    register(IfdScorer)
