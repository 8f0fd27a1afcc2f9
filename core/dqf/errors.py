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
