"""k-center parity: `dqf.select.kcenter_greedy` picks what MoDS's kCenterGreedy (diverse-data-selection/
kcenter_greedy.py, from Google's active-learning code) picks: min Euclidean distance to the chosen centres,
argmax each step, continuing from already-selected rows — transcribed below as the oracle."""

from __future__ import annotations

import numpy as np
import pytest

from dqf.select import kcenter_greedy


def reference(X: np.ndarray, already: list[int], n: int) -> list[int]:
    """select_batch_ with a non-empty already_selected: the new picks, in order."""
    d = np.sqrt(((X[:, None, :] - X[None, already, :]) ** 2).sum(-1))  # pairwise_distances(features, x)
    min_d = d.min(axis=1)
    picks = []
    for _ in range(n):
        ind = int(np.argmax(min_d))
        assert ind not in already and ind not in picks
        picks.append(ind)
        min_d = np.minimum(min_d, np.sqrt(((X - X[ind]) ** 2).sum(-1)))
    return picks


@pytest.mark.parametrize("seed_rows", [1, 5])
def test_kcenter_continues_from_the_seed_as_mods_does(seed_rows):
    rng = np.random.default_rng(seed_rows)
    # a shared offset, as BERT CLS vectors have: the float32 cancellation dqf guards against
    X = (rng.normal(size=(400, 24)) + 6.0).astype(np.float64)
    already = [int(i) for i in rng.choice(400, size=seed_rows, replace=False)]
    want = reference(X, already, 30)
    got = kcenter_greedy(X.astype(np.float32), 30, already_selected=already)  # the new picks
    assert got == want
