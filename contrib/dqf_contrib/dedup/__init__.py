"""Entry point of the `dedup` selector (exact and near-duplicate removal)."""

from dqf import hookimpl


@hookimpl
def dqf_register_selectors(register):
    from .dedup import DedupSelector

    register(DedupSelector)
