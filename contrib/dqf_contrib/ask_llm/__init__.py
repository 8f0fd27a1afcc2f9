"""Entry point of the `ask-llm` scorer (Ask-LLM: does a causal LM say the example is informative?)."""

from dqf import hookimpl


@hookimpl
def dqf_register_scorers(register):
    from .ask_llm import AskLlmScorer

    register(AskLlmScorer)
