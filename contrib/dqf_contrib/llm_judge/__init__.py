"""Entry point of the `llm-judge` scorer (AlpaGasus-style 0-5 accuracy rating by an LLM)."""

from dqf import hookimpl


@hookimpl
def dqf_register_scorers(register):
    from .llm_judge import LlmJudgeScorer

    register(LlmJudgeScorer)
