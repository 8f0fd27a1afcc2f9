"""Entry point of the `knn-distance` probe (mean distance to the k nearest rows in embedding space)."""

from dqf import hookimpl


@hookimpl
def dqf_register_probes(register):
    from .knn_distance import KnnDistanceProbe

    register(KnnDistanceProbe)
