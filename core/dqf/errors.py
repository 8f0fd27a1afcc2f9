"""Errors dqf reports to users as one readable line each (no traceback unless --debug)."""

from __future__ import annotations


class DqfError(Exception):
    """An error meant for the user: its message is complete and shown without a traceback."""

    def __init__(self, *lines: str):
        self.lines = [line for line in lines if line]
        super().__init__("\n".join(self.lines))


class RecipeError(DqfError):
    """A recipe is invalid; each line names the recipe file and the key path."""


class DataError(DqfError):
    """Input data is unreadable or malformed; the message names file, line and field."""


class PluginError(DqfError):
    """A plugin is unknown, duplicated or failed to load."""


def missing_dependency(module: str, extra: str | None = None, package: str | None = None, *,
                       user: str = "this plugin") -> DqfError:
    """The error to raise when an optional heavy library is not installed: names it and the pip command.

    ``user`` says who needs it (e.g. "the Ray engine"); ``extra`` names a dqf extra that installs it.
    """
    pkg = package or module
    hint = f"pip install 'dqf[{extra}]'" if extra else f"pip install {pkg}"
    return DqfError(f"{user} needs the Python package {pkg!r}, which is not installed; install it with: {hint}")


def require(module: str, package: str | None = None, extra: str | None = None, *, user: str = "this plugin"):
    """Import a heavy optional module, or raise :func:`missing_dependency`'s one-line error."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing_dependency(module, extra=extra, package=package, user=user) from None
