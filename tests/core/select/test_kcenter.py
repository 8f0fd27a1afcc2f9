"""k-center greedy: the vectorised picks equal a naive full-distance reference, on every input path."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dqf.select import kcenter as kc
from dqf.select.kcenter import kcenter_greedy, kcenter_radius

torch = pytest.importorskip("torch")
NO_ALREADY = np.empty(0, dtype=np.int64)


def naive_kcenter(X, k, already_selected=(), first=None, seed=0):
    """The textbook algorithm in float64: after each pick, recompute every row's distance to it.

    Chosen rows are excluded from the argmax (so duplicates of centres can still be picked and
    nothing is returned twice); ties go to the lowest index (np.argmax).
    """
    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    already = sorted({int(a) for a in already_selected})
    chosen = np.zeros(n, dtype=bool)
    chosen[already] = True
    k = min(k, n - len(already))
    if k <= 0:
        return []
    min_dist = np.full(n, np.inf)
    for a in already:
        min_dist = np.minimum(min_dist, np.sqrt(((X - X[a]) ** 2).sum(axis=1)))
    if already:
        nxt = int(np.argmax(np.where(chosen, -np.inf, min_dist)))
    else:
        nxt = first if first is not None else int(np.random.default_rng(seed).integers(n))
    picks = []
    for _ in range(k):
        picks.append(nxt)
        chosen[nxt] = True
        min_dist = np.minimum(min_dist, np.sqrt(((X - X[nxt]) ** 2).sum(axis=1)))
        nxt = int(np.argmax(np.where(chosen, -np.inf, min_dist)))
    return picks


def torch_backend(X, k, already=NO_ALREADY, first=None, chunk_rows=None, is_tensor=False):
    """The torch code path the public function takes on CUDA, run here on the CPU."""
    return kc._kcenter_torch(X, k, already, first, "cpu", chunk_rows, None, is_tensor)


def naive_radius(X, centres):
    X = np.asarray(X, dtype=np.float64)
    return max(min(float(np.linalg.norm(x - X[c])) for c in centres) for x in X)


def gaussian(seed, n, d):
    """Float32 embeddings with a common offset (as real embeddings have) and a random scale."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) * rng.uniform(0.5, 3) + rng.uniform(-4, 4, size=d)).astype(np.float32)


def grid(seed, n, d, duplicates=True):
    """Small-integer rows: distances are exact in float32, so ties are real ties and must break low."""
    rng = np.random.default_rng(seed)
    X = rng.integers(-2, 3, size=(n, d)).astype(np.float32) + 50
    if duplicates:
        X[rng.integers(n, size=n // 4)] = X[rng.integers(n, size=n // 4)]
    return X


GAUSSIAN_CASES = [(0, 60, 8), (1, 200, 16), (2, 500, 32), (3, 500, 64), (4, 300, 64), (5, 128, 8)]


@pytest.mark.parametrize("seed,n,d", GAUSSIAN_CASES)
def test_matches_naive_on_gaussian_rows(seed, n, d):
    X = gaussian(seed, n, d)
    k = n if n <= 200 else n // 2
    got = kcenter_greedy(X, k, seed=seed)
    assert got == naive_kcenter(X, k, seed=seed)
    assert len(set(got)) == k


@pytest.mark.parametrize("seed", range(4))
def test_matches_naive_with_exact_ties_and_duplicates(seed):
    X = grid(seed, 150, [8, 16, 32, 64][seed])
    got = kcenter_greedy(X, 150, seed=seed)
    assert got == naive_kcenter(X, 150, seed=seed)
    assert sorted(got) == list(range(150))  # duplicates of centres are still picked, once each


@pytest.mark.parametrize("seed", range(3))
def test_exact_on_rows_with_a_large_common_offset(seed):
    """Rows far from the origin (offset ~100x the spread): the plain float32 expansion
    |x|^2 - 2 x.c + |c|^2 loses the distances to cancellation; taking norms relative to the
    column mean keeps the picks equal to the float64 reference (and on both backends)."""
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((300, 32)) + rng.uniform(50, 150, size=32)).astype(np.float32)
    expected = naive_kcenter(X, 150, first=0)
    assert kcenter_greedy(X, 150, first=0) == expected
    assert torch_backend(X, 150, first=0) == expected


def test_default_first_centre_is_seeded():
    X = gaussian(7, 300, 16)
    for seed in (0, 1, 123):
        assert kcenter_greedy(X, 3, seed=seed)[0] == int(np.random.default_rng(seed).integers(300))
    assert kcenter_greedy(X, 20) == kcenter_greedy(X, 20, seed=0)
    assert kcenter_greedy(X, 20, seed=1) != kcenter_greedy(X, 20, seed=0)


def test_first_is_honoured():
    X = gaussian(8, 250, 32)
    for first in (0, 17, 249):
        got = kcenter_greedy(X, 40, first=first)
        assert got[0] == first
        assert got == naive_kcenter(X, 40, first=first)


@pytest.mark.parametrize("make", [gaussian, grid])
def test_already_selected_is_honoured_and_never_returned(make):
    X = make(9, 400, 32)
    seed_set = [5, 77, 77, 300, 12, 399]  # unsorted, with a repeat
    got = kcenter_greedy(X, 60, already_selected=seed_set)
    assert got == naive_kcenter(X, 60, already_selected=seed_set)
    assert not set(got) & set(seed_set)
    # the first new pick is the row farthest from the existing centres
    X64 = X.astype(np.float64)
    dist = np.min([np.linalg.norm(X64 - X64[c], axis=1) for c in seed_set], axis=0)
    assert dist[got[0]] == pytest.approx(dist.max(), rel=1e-6)


@pytest.mark.parametrize("make", [gaussian, grid])
def test_continuing_from_a_seed_set_equals_one_longer_run(make):
    X = make(10, 300, 16)
    head = kcenter_greedy(X, 15, first=3)
    tail = kcenter_greedy(X, 25, already_selected=np.array(head))
    assert head + tail == kcenter_greedy(X, 40, first=3)


def test_k_larger_than_available_rows_is_clipped():
    X = gaussian(11, 40, 8)
    assert sorted(kcenter_greedy(X, 1000)) == list(range(40))
    got = kcenter_greedy(X, 1000, already_selected=range(0, 40, 2))
    assert sorted(got) == list(range(1, 40, 2))
    assert kcenter_greedy(X, 5, already_selected=range(40)) == []


def test_degenerate_inputs():
    one = np.array([[3.0, -1.0]], dtype=np.float32)
    assert kcenter_greedy(one, 5) == [0]
    assert kcenter_radius(one, [0]) == 0.0
    same = np.tile(np.array([[1.5, 2.0, -7.0]], dtype=np.float32), (12, 1))  # all rows identical
    assert kcenter_greedy(same, 12, first=4) == [4] + [i for i in range(12) if i != 4]
    assert kcenter_greedy(same, 3, already_selected=[0, 2]) == [1, 3, 4]
    assert kcenter_radius(same, [7]) == 0.0


def test_k_zero_returns_empty():
    X = gaussian(12, 30, 8)
    assert kcenter_greedy(X, 0) == []
    assert kcenter_greedy(X, 0, first=4) == []
    assert kcenter_greedy(np.zeros((0, 4), dtype=np.float32), 3) == []


def test_radius_shrinks_as_k_grows_and_reaches_zero():
    X = gaussian(13, 120, 16)
    picks = kcenter_greedy(X, 120, first=0)
    radii = [kcenter_radius(X, picks[:j]) for j in range(1, 121)]
    assert all(b <= a for a, b in zip(radii, radii[1:]))
    assert radii[0] > radii[10] > radii[60] > 0
    assert radii[-1] == 0.0
    # greedy invariant: pick j+1 is radius(first j) away from every earlier pick
    X64 = X.astype(np.float64)
    for j in (1, 5, 30, 90):
        p = X64[picks[: j + 1]]
        pair = np.linalg.norm(p[:, None] - p[None], axis=-1)[np.triu_indices(j + 1, 1)]
        assert pair.min() >= radii[j - 1] * (1 - 1e-5)
        assert np.min(np.linalg.norm(X64[picks[:j]] - X64[picks[j]], axis=1)) == pytest.approx(radii[j - 1], rel=1e-5)


def test_radius_matches_brute_force():
    X = gaussian(14, 80, 8)
    for centres in ([0], [3, 50, 79], list(range(0, 80, 7))):
        assert kcenter_radius(X, centres) == pytest.approx(naive_radius(X, centres), rel=1e-9)
        assert kcenter_radius(torch.from_numpy(X), centres) == pytest.approx(naive_radius(X, centres), rel=1e-9)
    far = X + np.float32(1000)  # a large common offset does not cost precision
    assert kcenter_radius(far, [3, 50]) == pytest.approx(naive_radius(far, [3, 50]), rel=1e-6)


@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 499, 10_000])
def test_chunked_path_gives_identical_picks(chunk_rows):
    X = gaussian(15, 500, 32)
    whole = kcenter_greedy(X, 120, seed=3)
    assert kcenter_greedy(X, 120, seed=3, chunk_rows=chunk_rows) == whole
    seed_set = whole[:10]
    assert (kcenter_greedy(X, 50, already_selected=seed_set, chunk_rows=chunk_rows)
            == kcenter_greedy(X, 50, already_selected=seed_set) == whole[10:60])


def test_memmap_input(tmp_path, monkeypatch):
    X = gaussian(16, 400, 64)
    path = tmp_path / "emb.f32"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=X.shape)
    mm[:] = X
    mm.flush()
    del mm
    ro = np.memmap(path, dtype=np.float32, mode="r", shape=X.shape)
    expected = naive_kcenter(X, 80, seed=2)
    assert kcenter_greedy(ro, 80, seed=2) == expected
    assert kcenter_greedy(ro, 80, seed=2, chunk_rows=33) == expected
    # a memmap over the budget is streamed in chunks automatically
    monkeypatch.setattr(kc, "MEMMAP_BUDGET_BYTES", 0)
    assert kcenter_greedy(ro, 80, seed=2) == expected
    assert torch_backend(ro, 80, first=expected[0]) == expected
    assert np.array_equal(np.fromfile(path, dtype=np.float32).reshape(X.shape), X)


def test_float64_memmap_streamed(tmp_path):
    X = gaussian(17, 300, 16).astype(np.float64)
    path = tmp_path / "emb.f64"
    X.tofile(path)
    ro = np.memmap(path, dtype=np.float64, mode="r", shape=X.shape)
    assert kcenter_greedy(ro, 50, first=1, chunk_rows=41) == naive_kcenter(X, 50, first=1)


@pytest.mark.parametrize("make,seed,n,d", [(gaussian, 0, 60, 8), (gaussian, 2, 500, 32), (gaussian, 3, 500, 64),
                                           (grid, 1, 150, 16)])
def test_torch_and_numpy_backends_give_identical_picks(make, seed, n, d):
    X = make(seed, n, d)
    k = min(n, 250)
    expected = kcenter_greedy(X, k, seed=seed)
    first = expected[0]
    assert kc._kcenter_numpy(X, k, NO_ALREADY, first, None, None) == expected
    assert kc._kcenter_numpy(X, k, NO_ALREADY, first, 37, None) == expected
    assert torch_backend(X, k, first=first) == expected
    assert torch_backend(X, k, first=first, chunk_rows=37) == expected
    assert torch_backend(torch.from_numpy(X), k, first=first, is_tensor=True) == expected
    assert torch_backend(torch.from_numpy(X).double(), k, first=first, chunk_rows=50, is_tensor=True) == expected
    seed_set = np.array(sorted(expected[:5]), dtype=np.int64)
    for chunk_rows in (None, 23):
        assert kc._kcenter_numpy(X, k - 5, seed_set, None, chunk_rows, None) == expected[5:]
        assert torch_backend(X, k - 5, seed_set, chunk_rows=chunk_rows) == expected[5:]


def test_torch_and_other_inputs_are_accepted_and_left_untouched():
    X = gaussian(18, 200, 16)
    before = X.copy()
    expected = kcenter_greedy(X, 30, seed=5)
    assert kcenter_greedy(torch.from_numpy(X), 30, seed=5) == expected
    assert kcenter_greedy(torch.from_numpy(X).double(), 30, seed=5, chunk_rows=50) == expected
    assert kcenter_greedy(X.astype(np.float64), 30, seed=5) == expected
    assert kcenter_greedy(np.asfortranarray(X), 30, seed=5) == expected
    assert kcenter_greedy(X.tolist(), 30, seed=5) == expected
    assert kcenter_greedy(X, 30, seed=5, device="cpu") == expected
    assert kcenter_greedy(X, 20, already_selected=torch.tensor(expected[:10])) == expected[10:30]
    assert np.array_equal(X, before)
    G = grid(2, 100, 8)
    assert kcenter_greedy(G.astype(np.int64), 100, seed=1) == naive_kcenter(G, 100, seed=1)


def test_progress_is_advanced_once_per_pick():
    X = gaussian(20, 100, 8)
    calls = []
    assert len(kcenter_greedy(X, 25, progress=calls.append)) == 25
    assert calls == [1] * 25
    calls.clear()
    kcenter_greedy(X, 500, already_selected=range(90), progress=calls.append)
    assert calls == [1] * 10


@pytest.mark.parametrize("kwargs,match", [
    ({"k": -1}, "k must be >= 0"),
    ({"k": 2.5}, "k must be an integer"),
    ({"k": True}, "k must be an integer"),
    ({"k": 3, "first": 50}, "first=50 is out of range"),
    ({"k": 3, "first": -1}, "first=-1 is out of range"),
    ({"k": 3, "first": 1.0}, "first must be a row index"),
    ({"k": 3, "already_selected": [1, 50]}, "row index 50 is out of range"),
    ({"k": 3, "already_selected": [-1]}, "row index -1 is out of range"),
    ({"k": 3, "already_selected": [[1, 2]]}, "1-D sequence of integers"),
    ({"k": 3, "already_selected": [1.5]}, "1-D sequence of integers"),
    ({"k": 3, "already_selected": [1], "first": 2}, "not both"),
    ({"k": 3, "chunk_rows": 0}, "chunk_rows must be a positive integer"),
])
def test_bad_arguments_raise(kwargs, match):
    X = gaussian(21, 50, 8)
    with pytest.raises(ValueError, match=match):
        kcenter_greedy(X, **kwargs)


@pytest.mark.parametrize("X,match", [
    (np.zeros(10, dtype=np.float32), "must be 2-D"),
    (np.zeros((4, 5, 6), dtype=np.float32), "must be 2-D"),
    (np.zeros((4, 0), dtype=np.float32), "at least one feature"),
    (np.array([["a", "b"]]), "real-valued"),
    (np.ones((3, 2), dtype=np.complex64), "real-valued"),
])
def test_bad_shapes_and_dtypes_raise(X, match):
    with pytest.raises(ValueError, match=match):
        kcenter_greedy(X, 1)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 3e38])
def test_non_finite_rows_are_named(bad):
    X = gaussian(22, 40, 8)
    X[13, 2] = bad
    with pytest.raises(ValueError, match=r"row 13\)"):
        kcenter_greedy(X, 5)
    with pytest.raises(ValueError, match=r"row 13\)"):
        kcenter_greedy(X, 5, chunk_rows=6)
    for chunk_rows in (None, 6):
        with pytest.raises(ValueError, match=r"row 13\)"):
            torch_backend(X, 5, first=0, chunk_rows=chunk_rows)


def test_radius_argument_errors():
    X = gaussian(23, 20, 4)
    with pytest.raises(ValueError, match="must not be empty"):
        kcenter_radius(X, [])
    with pytest.raises(ValueError, match="out of range"):
        kcenter_radius(X, [20])


def test_module_import_and_cpu_run_do_not_import_torch():
    path = Path(kc.__file__)
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('kcenter_alone', {str(path)!r})\n"
            "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
            "import numpy as np\n"
            "X = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)\n"
            "assert len(set(mod.kcenter_greedy(X, 5, device='numpy'))) == 5\n"
            "assert len(set(mod.kcenter_greedy(X, 5, device='cpu', fp16_screen=False))) == 5\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert importlib.util.find_spec("torch") is not None  # so the check above was meaningful


# ---------------------------------------------------------------------------------------------
# float16 screen: it may only skip rows whose float32 distance it proves cannot improve


SCREEN_CASES = [(gaussian, 0, 400, 32), (gaussian, 1, 600, 64), (gaussian, 4, 300, 8), (grid, 2, 300, 16),
                (grid, 3, 200, 64)]


@pytest.mark.parametrize("make,seed,n,d", SCREEN_CASES)
def test_fp16_screen_gives_the_float32_picks(make, seed, n, d):
    X = make(seed, n, d)
    plain = kcenter_greedy(X, n // 2, first=0, fp16_screen=False)
    assert kcenter_greedy(X, n // 2, first=0, fp16_screen=True) == plain
    if make is grid:  # exact ties: both must also equal the float64 reference
        assert plain == naive_kcenter(X, n // 2, first=0)


@pytest.mark.parametrize("make", [gaussian, grid])
def test_fp16_screen_with_already_selected_and_large_offsets(make):
    X = make(7, 500, 32)
    X[:, :4] += 1000  # a large common component: the centred float16 copy must not lose it
    already = np.arange(0, 500, 25)
    plain = kcenter_greedy(X, 100, already_selected=already, fp16_screen=False)
    assert kcenter_greedy(X, 100, already_selected=already, fp16_screen=True) == plain


def clustered(seed, n, d, clusters=8):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)) * 4
    return (centres[rng.integers(clusters, size=n)] + rng.standard_normal((n, d))).astype(np.float32)


@pytest.mark.parametrize("seed", range(3))
def test_fp16_screen_candidates_hold_every_row_the_new_centre_improves(seed):
    """The screen's invariant, checked step by step against full float32 distances: every row whose
    distance to the new centre is below its current nearest-centre distance is a candidate, and on
    clustered data most rows are not (so the screen does save reads)."""
    X = clustered(seed, 2000, 48)
    n = len(X)
    Xw = np.ascontiguousarray(X)
    mu = Xw.mean(axis=0).astype(np.float32)
    sqn = np.einsum("ij,ij->i", Xw - mu, Xw - mu).astype(np.float32)
    screen = kc._Fp16Screen.build(Xw, mu, sqn, C0=Xw[0] - mu, calibrate=False)
    mind = np.full(n, np.inf, dtype=np.float32)
    idx, sizes = 0, []
    for _ in range(60):
        C = Xw[idx] - mu
        const = np.float32(sqn[idx] + 2 * float(C.astype(np.float64) @ mu.astype(np.float64)))
        full = np.maximum(Xw @ C * -2 + sqn + const, 0)
        cand = screen.candidates(idx, C, const, mind)
        if cand is not None:
            improved = np.flatnonzero(full < mind)
            assert np.isin(improved, cand).all()
            sizes.append(cand.size)
        mind = np.minimum(mind, full)
        mind[idx] = -1
        idx = int(np.argmax(mind))
    assert sizes and np.median(sizes) < n / 4


def test_fp16_screen_argument_errors():
    X = gaussian(3, 50, 4)
    with pytest.raises(ValueError, match="fp16_screen"):
        kcenter_greedy(X, 5, fp16_screen="yes")
    with pytest.raises(ValueError, match="needs torch"):
        kcenter_greedy(X, 5, device="numpy", fp16_screen=True)
