"""Entry point of the `kmeans-quality` selector (kMQ: k-means clusters, quality-weighted sampling inside each)."""

from dqf import hookimpl


@hookimpl
def dqf_register_selectors(register):
    from .kmeans_quality import KmeansQualitySelector

    register(KmeansQualitySelector)
