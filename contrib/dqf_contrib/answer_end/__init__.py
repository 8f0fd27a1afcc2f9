"""Entry point of the `answer-end` scorer (does a causal LM expect the answer to end where it ends?)."""

from dqf import hookimpl


@hookimpl
def dqf_register_scorers(register):
    from .answer_end import AnswerEndScorer

    register(AnswerEndScorer)
