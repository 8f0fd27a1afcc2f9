"""Entry point of the `language` scorer (which language the instruction and the answer are written in)."""

from dqf import hookimpl


@hookimpl
def dqf_register_scorers(register):
    from .language import LanguageScorer

    register(LanguageScorer)
