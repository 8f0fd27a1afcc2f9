"""Entry point of the `deita-repr` selector (DEITA score-first, diversity-aware selection)."""

from dqf import hookimpl


@hookimpl
def dqf_register_selectors(register):
    from .deita_repr import DeitaReprSelector

    register(DeitaReprSelector)
