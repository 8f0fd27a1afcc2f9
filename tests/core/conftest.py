"""Core tests' fixtures: the small `words` scorer (tests/words_plugin.py) as a local plugin module beside each
test's recipes, so recipes reach it with ``plugins = ["words.py"]`` as a user's own module would be."""

from __future__ import annotations

import shutil

import pytest
from words_plugin import PATH as WORDS_PLUGIN


@pytest.fixture
def words_module(tmp_path):
    target = tmp_path / "words.py"
    shutil.copyfile(WORDS_PLUGIN, target)
    return target
