"""Built-in dqf plugins (MoDS and basic selectors), registered through the `dqf` entry point like any third-party package."""

from dqf import hookimpl


@hookimpl
def dqf_register_scorers(register):
    from .reward_model import RewardModelScorer

    register(RewardModelScorer)

    from .reference_similarity import ReferenceSimilarityScorer

    register(ReferenceSimilarityScorer)


@hookimpl
def dqf_register_selectors(register):
    from .random import RandomSelector
    from .threshold import ThresholdSelector
    from .top_k import TopKSelector

    register(ThresholdSelector)
    register(TopKSelector)
    register(RandomSelector)

    from .kcenter import KCenterSelector

    register(KCenterSelector)


@hookimpl
def dqf_register_probes(register):
    from .mods_necessity import ModsNecessityProbe

    register(ModsNecessityProbe)


@hookimpl
def dqf_register_embedders(register):
    from .hf_encoder import HfEncoderEmbedder

    register(HfEncoderEmbedder)


@hookimpl
def dqf_register_backends(register):
    from .openai_backend import OpenaiBackend
    from .transformers_backend import TransformersBackend
    from .vllm_backend import VllmBackend

    register(TransformersBackend)
    register(VllmBackend)
    register(OpenaiBackend)
