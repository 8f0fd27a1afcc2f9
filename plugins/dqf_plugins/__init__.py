"""Built-in dqf plugins (MoDS and basic selectors), registered through the `dqf` entry point like any third-party package."""

from dqf import hookimpl


@hookimpl
def dqf_register_scorers(register):
    pass


@hookimpl
def dqf_register_selectors(register):
    from .random import RandomSelector
    from .threshold import ThresholdSelector
    from .top_k import TopKSelector

    register(ThresholdSelector)
    register(TopKSelector)
    register(RandomSelector)


@hookimpl
def dqf_register_probes(register):
    pass


@hookimpl
def dqf_register_embedders(register):
    pass
