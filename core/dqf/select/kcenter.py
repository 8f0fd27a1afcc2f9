"""Exact k-center greedy (farthest-point) selection over embedding rows, on torch or numpy, in or out of core."""

from __future__ import annotations

import sys
import warnings
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["kcenter_greedy", "kcenter_radius"]

# Two backends run the same float32 arithmetic: torch on an accelerator, numpy on the CPU.
# Each step is one matrix-vector product over all of X, so it is memory-bandwidth bound, and
# numpy's OpenBLAS gemv reaches that bound where torch's CPU mv may not (measured with torch
# 2.13's MKL on an AMD EPYC host: 3x or more slower than numpy on a 100k x 384 matrix). The
# numpy backend also serves when torch is not installed. Both give the same picks (float32
# near-ties aside: a different summation order can break a tie within rounding the other way).

# A memmap larger than this is streamed in row chunks each step instead of being used whole.
MEMMAP_BUDGET_BYTES = 2 << 30
# Auto-chunk size when streaming (rows are chosen so one chunk holds about this many float32 bytes).
_CHUNK_BYTES = 64 << 20
# Upper bound on the temporary (rows x centres) block built while seeding from already_selected.
_BLOCK_BYTES = 64 << 20
# Share of free accelerator memory X may take before it is streamed from the host instead.
_DEVICE_FRACTION = 0.8
# The float16 screen pays for its calibration and half-size copy only on problems at least this big.
_SCREEN_MIN_ELEMENTS = 1 << 22
# The screen is used when its float16 pass takes at most this share of a float32 pass: its per-step
# element-wise work and float32 gathers ate the gain at a measured 0.8 (1M x 384: 38.8 s vs 35.1 s).
_SCREEN_MAX_RATIO = 0.6
# A step whose screen leaves more than this share of rows as candidates does a full float32 pass.
_SCREEN_MAX_CANDIDATES = 0.25


def kcenter_greedy(
    X: Any,
    k: int,
    *,
    already_selected: Sequence[int] | np.ndarray = (),
    first: int | None = None,
    seed: int | None = 0,
    device: Any = None,
    chunk_rows: int | None = None,
    progress: Callable[[int], Any] | None = None,
    fp16_screen: bool | None = None,
) -> list[int]:
    """Pick ``k`` rows of ``X`` by greedy k-center (farthest-point) selection under Euclidean distance.

    Each step adds the row whose distance to its nearest chosen centre is largest, which is
    the 2-approximation of Gonzalez (1985) used by Sener & Savarese (2018) and by MoDS
    (Du et al. 2023) to pick a diverse seed set. The result is exactly the naive algorithm's
    (recompute every distance to the new centre, take the argmax), with ties broken by the
    lowest row index, up to float32 rounding of near-equal distances.

    How: a float32 vector of squared distance to the nearest centre is kept per row. A step
    computes the new centre's squared distance to every row as one matrix-vector product with
    precomputed squared norms (``|x|^2 - 2 x.c + |c|^2``, negative rounding clamped to 0),
    takes the element-wise minimum and then the argmax. Norms and the centre are taken
    relative to (a rounding of) the column mean, which leaves distances unchanged but cuts
    the float32 cancellation error when the rows share a large common component, as
    embeddings do. Chosen rows are marked so they are never picked again, even when only
    exact duplicates of centres remain.

    Args:
        X: ``(n, d)`` rows, a numpy array (``np.memmap`` included), a torch tensor or anything
            ``np.asarray`` accepts. Real-valued; used as float32, copying X at most once: no
            copy when it is already C-contiguous float32 on the target device or is streamed.
        k: number of new rows to pick; clipped to the number of rows not in ``already_selected``.
        already_selected: row indices that are centres already (e.g. a seed set when continuing
            coverage over a pool that contains it). Distances start from these centres, the
            first new pick is the farthest row from them, and none of them is returned.
        first: the first centre when ``already_selected`` is empty. Not allowed together with
            ``already_selected``.
        seed: when neither ``first`` nor ``already_selected`` is given, the first centre is
            ``np.random.default_rng(seed).integers(n)`` (the reference picks it at random too).
        device: where the arithmetic runs. ``None`` or ``"auto"``: CUDA when torch sees one (a
            CUDA tensor stays on its device), else the CPU. Any torch device string works.
            Every CPU run does its float32 arithmetic with numpy's BLAS; ``"numpy"`` also never
            imports torch (and so has no float16 screen).
        chunk_rows: stream X in blocks of this many rows every step instead of holding it whole
            on the device. Chosen automatically for a memmap over 2 GiB, or for X that does not
            fit in 80% of the free accelerator memory.
        progress: called with ``1`` after every pick (e.g. a progress bar's ``advance``).
        fp16_screen: CPU only. Each step first reads a float16 copy of X (half the bytes) to find,
            with a proven rounding-error bound, the rows whose nearest-centre distance the new
            centre can change; only those are recomputed in float32, so the picks are those of
            the float32 algorithm. ``None`` (default): on when torch is installed, X is in memory
            and has at least 4M elements, and a timing of both passes on X shows the float16 one
            at most 0.6x as long (it depends on the CPU's float16 kernels). ``True``: on whenever
            torch is installed; ``False``: off. Costs a float16 copy of X (half its size).

    Returns:
        The new picks, in pick order, as Python ints (``[]`` when k is 0 or nothing is left).

    Raises:
        ValueError: ``k`` negative or not an integer, ``X`` not 2-D / not real / containing NaN
            or inf, ``already_selected`` or ``first`` out of range, or both given.

    Complexity:
        O(k * n * d) time -- one pass over X per pick, memory-bandwidth bound -- plus one pass
        each for the column mean and the squared norms (and ``len(already_selected) * n * d``
        for seeding). O(n) extra memory -- three float32 vectors of length n and temporaries
        of at most one chunk (64 MiB) -- besides the one float32 copy of X made when X is not
        float32 on the target device already; never an ``n x k`` or ``n x n`` matrix.
    """
    X, n, d, is_tensor = _check_x(X)
    k = _check_k(k)
    already = _check_indices(already_selected, n)
    if first is not None:
        if already.size:
            raise ValueError("kcenter_greedy: give either `first` or `already_selected`, not both "
                             "(with already_selected the first pick is the row farthest from them)")
        first = _check_index(first, n, "first")
    if chunk_rows is not None:
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1:
            raise ValueError(f"kcenter_greedy: chunk_rows must be a positive integer, got {chunk_rows!r}")
        chunk_rows = int(chunk_rows)
    k = min(k, n - already.size)
    if k == 0:
        return []
    if not already.size and first is None:
        first = int(np.random.default_rng(seed).integers(n))
    if fp16_screen is not None and not isinstance(fp16_screen, bool):
        raise ValueError(f"kcenter_greedy: fp16_screen must be True, False or None, got {fp16_screen!r}")
    if device == "numpy" and fp16_screen:
        raise ValueError("kcenter_greedy: fp16_screen=True needs torch; device='numpy' runs numpy alone")
    if not is_tensor and (device == "numpy" or (device == "cpu" and fp16_screen is False)):
        return _kcenter_numpy(X, k, already, first, chunk_rows, progress, False)  # torch never imported
    try:
        import torch
    except ImportError:
        if device not in (None, "auto", "cpu") or fp16_screen:
            what = f"device={device!r}" if device not in (None, "auto", "cpu") else "fp16_screen=True"
            raise ValueError(f"kcenter_greedy: {what} needs torch, which is not installed") from None
        return _kcenter_numpy(X, k, already, first, chunk_rows, progress, False)
    dev = _resolve_device(torch, X, is_tensor, device)
    if dev.type == "cpu":  # numpy's BLAS: see the module notes on CPU matrix-vector speed
        if is_tensor:
            X = X.detach().cpu()
            X = (X if X.dtype in (torch.float32, torch.float64) else X.float()).numpy()
        return _kcenter_numpy(X, k, already, first, chunk_rows, progress, fp16_screen)
    return _kcenter_torch(X, k, already, first, dev, chunk_rows, progress, is_tensor)


def kcenter_radius(X: Any, centres: Sequence[int] | np.ndarray) -> float:
    """Covering radius: the largest Euclidean distance from any row of ``X`` to its nearest centre.

    Computed in float64, relative to the column mean, by blocks (memory bounded by a few tens
    of MB); a centre's own distance is exactly 0. ``centres`` are row indices of ``X`` and must
    not be empty. O(n * m * d) time for m centres.
    """
    X, n, d, is_tensor = _check_x(X)
    if is_tensor:
        X = X.detach().cpu().double().numpy()
    idx = _check_indices(centres, n)
    if not idx.size:
        raise ValueError("kcenter_radius: centres must not be empty")
    step = max(1, _BLOCK_BYTES // (8 * d))
    mean = sum(np.asarray(X[s:s + step], dtype=np.float64).sum(axis=0) for s in range(0, n, step)) / n
    C = np.asarray(X[np.sort(idx)], dtype=np.float64) - mean
    sqc = np.einsum("ij,ij->i", C, C)
    is_centre = np.zeros(n, dtype=bool)
    is_centre[idx] = True
    rows = max(1, _BLOCK_BYTES // (8 * max(d, C.shape[0])))
    cols = max(1, _BLOCK_BYTES // (8 * rows))
    worst = 0.0
    for s in range(0, n, rows):
        xb = np.asarray(X[s:s + rows], dtype=np.float64) - mean
        sqx = np.einsum("ij,ij->i", xb, xb)
        best = np.full(xb.shape[0], np.inf)
        for t in range(0, C.shape[0], cols):
            g = xb @ C[t:t + cols].T
            g *= -2
            g += sqx[:, None]
            g += sqc[None, t:t + cols]
            np.minimum(best, g.min(axis=1), out=best)
        best[is_centre[s:s + rows]] = 0.0
        worst = max(worst, float(np.maximum(best, 0.0).max()))
    return float(np.sqrt(worst))


# ---------------------------------------------------------------------------------------------
# validation


def _is_torch_tensor(X: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(X, torch.Tensor)


def _check_x(X: Any) -> tuple[Any, int, int, bool]:
    is_tensor = _is_torch_tensor(X)
    if is_tensor:
        if X.is_complex() or X.dtype == sys.modules["torch"].bool:
            raise ValueError(f"kcenter: X must be real-valued, got dtype {X.dtype}")
    else:
        if not isinstance(X, np.ndarray):
            X = np.asarray(X)
        if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
            raise ValueError(f"kcenter: X must be real-valued, got dtype {X.dtype}")
    if X.ndim != 2:
        raise ValueError(f"kcenter: X must be 2-D (rows x features), got shape {tuple(X.shape)}")
    n, d = (int(s) for s in X.shape)
    if d < 1:
        raise ValueError(f"kcenter: X must have at least one feature column, got shape {tuple(X.shape)}")
    return X, n, d, is_tensor


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"kcenter_greedy: k must be an integer, got {k!r}")
    if k < 0:
        raise ValueError(f"kcenter_greedy: k must be >= 0, got {k}")
    return int(k)


def _check_index(i: Any, n: int, name: str) -> int:
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
        raise ValueError(f"kcenter_greedy: {name} must be a row index (int), got {i!r}")
    if not 0 <= i < n:
        raise ValueError(f"kcenter_greedy: {name}={i} is out of range for X with {n} rows")
    return int(i)


def _check_indices(idx: Any, n: int) -> np.ndarray:
    if _is_torch_tensor(idx):
        idx = idx.detach().cpu().numpy()
    arr = np.asarray(idx)
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer)):
        raise ValueError("kcenter: row indices must be a 1-D sequence of integers, "
                         f"got shape {arr.shape} dtype {arr.dtype}")
    bad = arr[(arr < 0) | (arr >= n)]
    if bad.size:
        raise ValueError(f"kcenter: row index {int(bad[0])} is out of range for X with {n} rows "
                         f"({bad.size} out of range)")
    return np.unique(arr.astype(np.int64))


def _row_blocks(n: int, chunk_rows: int | None) -> list[tuple[int, int]]:
    step = n if chunk_rows is None else chunk_rows
    return [(s, min(s + step, n)) for s in range(0, n, step)]


# ---------------------------------------------------------------------------------------------
# shared pieces


def _offset(shift: np.ndarray, s1: np.ndarray, s2: np.ndarray, n: int) -> np.ndarray:
    """A float32 offset near the column mean, from sums of ``x - shift`` and of its squares.

    Distances are translation-invariant, so subtracting any offset leaves the picks unchanged;
    removing the common component shrinks the squared norms and with them the float32
    cancellation error of ``|x|^2 - 2 x.c + |c|^2`` (embeddings such as BERT CLS vectors share
    a large one). The mean is rounded to a multiple of a power of two near 1/8 of the data's
    spread: that keeps the offset's benefit and makes ``x - offset`` and its products exact
    for small-integer data, so exact ties stay exact ties.
    """
    mean_rel = s1 / n
    spread = float(np.sqrt(max(float(np.mean(s2 / n - mean_rel ** 2)), 0.0)))
    mean = shift.astype(np.float64) + mean_rel
    if not (np.isfinite(spread) and spread > 0 and np.isfinite(mean).all()):
        return shift.astype(np.float32)
    q = 2.0 ** (np.floor(np.log2(spread)) - 3)
    return (np.round(mean / q) * q).astype(np.float32)


def _seed_block(n_rows: int, n_centres: int) -> int:
    """How many existing centres to process at once so a (rows x centres) block stays small."""
    return max(1, min(n_centres, _BLOCK_BYTES // (4 * max(n_rows, 1))))


# ---------------------------------------------------------------------------------------------
# torch backend


def _resolve_device(torch, X, is_tensor: bool, device: Any):
    if device is None or device == "auto":
        if is_tensor and X.device.type != "cpu":
            return X.device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "numpy":
        return torch.device("cpu")
    return torch.device(device)


def _np_tensor(torch, a: np.ndarray):
    """A float32 C-contiguous CPU tensor over ``a``: zero-copy when it already is one."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    with warnings.catch_warnings():  # read-only memmaps: nothing is ever written through it
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


def _kcenter_torch(X, k, already, first, device, chunk_rows, progress, is_tensor) -> list[int]:
    import torch

    dev = device if isinstance(device, torch.device) else _resolve_device(torch, X, is_tensor, device)
    n, d = (int(s) for s in X.shape)
    if chunk_rows is None:
        if isinstance(X, np.memmap) and n * d * 4 > MEMMAP_BUDGET_BYTES:
            chunk_rows = max(1, _CHUNK_BYTES // (4 * d))
        elif dev.type == "cuda" and not (is_tensor and X.device == dev):
            free, _ = torch.cuda.mem_get_info(dev)
            if n * d * 4 > _DEVICE_FRACTION * free:
                chunk_rows = max(1, _CHUNK_BYTES // (4 * d))
    step = chunk_rows or max(1, _CHUNK_BYTES // (4 * d))

    def raw(sel):
        """Rows of X (a slice or an int64 numpy index array) as float32 on the device."""
        if is_tensor:
            if isinstance(sel, np.ndarray):
                sel = torch.from_numpy(sel).to(X.device)
            return X[sel].detach().to(device=dev, dtype=torch.float32)
        return _np_tensor(torch, X[sel]).to(dev)

    with torch.inference_mode():
        if chunk_rows is None:  # X whole on the device; a copy only if it is not float32 there already
            if is_tensor:
                Xd = X.detach().to(device=dev, dtype=torch.float32).contiguous()
            elif dev.type == "cpu":
                Xd = _np_tensor(torch, X)
            else:  # filled chunk by chunk: no full-size host temporary when X is not float32
                Xd = torch.empty((n, d), dtype=torch.float32, device=dev)
                for s, e in _row_blocks(n, step):
                    Xd[s:e] = raw(slice(s, e))
            blocks = [(0, n)]

            def block(s: int, e: int):
                return Xd[s:e]

            def rows(idx):  # idx: 1-D long tensor on the device (no host sync)
                return Xd.index_select(0, idx)
        else:  # streamed: each chunk is read and moved when used
            blocks = _row_blocks(n, chunk_rows)

            def block(s: int, e: int):
                return raw(slice(s, e))

            def rows(idx):
                return raw(idx.cpu().numpy())

        shift = block(0, 1)  # sums of x - X[0]: a cheap, cancellation-safe spread estimate
        s1 = torch.zeros(d, dtype=torch.float64, device=dev)
        s2 = torch.zeros(d, dtype=torch.float64, device=dev)
        for s, e in _row_blocks(n, step):
            xb = block(s, e) - shift
            s1 += xb.sum(dim=0, dtype=torch.float64)
            s2 += (xb * xb).sum(dim=0, dtype=torch.float64)
        if not bool(torch.isfinite(s1).all()):
            for s, e in _row_blocks(n, step):
                ok = torch.isfinite(block(s, e)).all(dim=1)
                if not bool(ok.all()):
                    raise ValueError(f"kcenter_greedy: X has NaN or inf values (row {s + int(torch.argmin(ok.int()))})")
        mu = torch.from_numpy(_offset(shift[0].cpu().numpy(), s1.cpu().numpy(), s2.cpu().numpy(), n)).to(dev)
        mu64 = mu.double()

        sqn = torch.empty(n, dtype=torch.float32, device=dev)  # |x - mu|^2
        for s, e in _row_blocks(n, step):
            xb = block(s, e) - mu
            torch.sum(xb * xb, dim=1, out=sqn[s:e])
        if not bool(torch.isfinite(sqn).all()):
            bad = int(torch.nonzero(~torch.isfinite(sqn))[0])
            raise ValueError(f"kcenter_greedy: X has values too large to square in float32 (row {bad})")

        def centres(idx):
            """Centred centre rows and the per-centre constant |c - mu|^2 + 2 mu.(c - mu)."""
            C = rows(idx) - mu
            const = sqn.index_select(0, idx).double() + 2 * (C.double() @ mu64)
            return C, const.float()

        mind = torch.full((n,), float("inf"), dtype=torch.float32, device=dev)
        buf = torch.empty(n, dtype=torch.float32, device=dev)

        if already.size:  # distances from the existing centres, a few centres at a time
            per = _seed_block(blocks[0][1] - blocks[0][0], already.size)
            for t in range(0, already.size, per):
                C, const = centres(torch.from_numpy(already[t:t + per]).to(dev))
                for s, e in blocks:
                    g = block(s, e) @ C.T
                    g.mul_(-2).add_(sqn[s:e, None]).add_(const[None, :]).clamp_(min=0)
                    torch.minimum(mind[s:e], g.amin(dim=1), out=mind[s:e])
            mind[torch.from_numpy(already).to(dev)] = -1.0
            idx = torch.argmax(mind).view(1)
        else:
            idx = torch.tensor([first], dtype=torch.long, device=dev)

        picks = torch.empty(k, dtype=torch.long, device=dev)
        for i in range(k):
            picks[i:i + 1] = idx
            if progress is not None:
                progress(1)
            if i == k - 1:
                break
            C, const = centres(idx)
            for s, e in blocks:
                out = buf[s:e]
                torch.addmv(sqn[s:e], block(s, e), C[0], alpha=-2, out=out)  # |x - mu|^2 - 2 x.(c - mu)
                out.add_(const).clamp_(min=0)
                torch.minimum(mind[s:e], out, out=mind[s:e])
            mind.index_fill_(0, idx, -1.0)  # chosen: never the argmax again
            idx = torch.argmax(mind).view(1)
        return picks.cpu().tolist()


# ---------------------------------------------------------------------------------------------
# numpy backend (every CPU run, and the fallback when torch is missing; same arithmetic, same picks)


def _kcenter_numpy(X, k, already, first, chunk_rows, progress, fp16_screen=False) -> list[int]:
    n, d = (int(s) for s in X.shape)
    if chunk_rows is None and isinstance(X, np.memmap) and n * d * 4 > MEMMAP_BUDGET_BYTES:
        chunk_rows = max(1, _CHUNK_BYTES // (4 * d))
    step = chunk_rows or max(1, _CHUNK_BYTES // (4 * d))

    if chunk_rows is None:
        Xw = np.ascontiguousarray(X, dtype=np.float32)  # a copy only if X is not float32 C-order already
        blocks = [(0, n)]
    else:
        Xw = X
        blocks = _row_blocks(n, chunk_rows)

    def block(s: int, e: int) -> np.ndarray:
        return np.ascontiguousarray(Xw[s:e], dtype=np.float32)

    def rows(ids) -> np.ndarray:
        return np.ascontiguousarray(Xw[ids], dtype=np.float32)

    shift = block(0, 1)
    s1 = np.zeros(d, dtype=np.float64)
    s2 = np.zeros(d, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        for s, e in _row_blocks(n, step):
            xb = block(s, e) - shift
            s1 += xb.sum(axis=0, dtype=np.float64)
            s2 += (xb * xb).sum(axis=0, dtype=np.float64)
    if not np.isfinite(s1).all():
        for s, e in _row_blocks(n, step):
            ok = np.isfinite(block(s, e)).all(axis=1)
            if not ok.all():
                raise ValueError(f"kcenter_greedy: X has NaN or inf values (row {s + int(np.argmin(ok))})")
    with np.errstate(over="ignore", invalid="ignore"):
        mu = _offset(shift[0], s1, s2, n)
        mu64 = mu.astype(np.float64)
        sqn = np.empty(n, dtype=np.float32)  # |x - mu|^2
        for s, e in _row_blocks(n, step):
            xb = block(s, e) - mu
            np.einsum("ij,ij->i", xb, xb, out=sqn[s:e])
    if not np.isfinite(sqn).all():
        raise ValueError("kcenter_greedy: X has values too large to square in float32 "
                         f"(row {int(np.flatnonzero(~np.isfinite(sqn))[0])})")

    def centres(ids):
        C = rows(ids) - mu
        const = sqn[ids].astype(np.float64) + 2 * (C.astype(np.float64) @ mu64)
        return C, const.astype(np.float32)

    mind = np.full(n, np.inf, dtype=np.float32)
    buf = np.empty(n, dtype=np.float32)
    screen = None
    if chunk_rows is None and fp16_screen is not False and (fp16_screen or n * d >= _SCREEN_MIN_ELEMENTS):
        screen = _Fp16Screen.build(Xw, mu, sqn, C0=centres([0])[0][0], calibrate=fp16_screen is None)
    if already.size:
        per = _seed_block(blocks[0][1] - blocks[0][0], already.size)
        for t in range(0, already.size, per):
            C, const = centres(already[t:t + per])
            for s, e in blocks:
                g = block(s, e) @ C.T
                g *= -2
                g += sqn[s:e, None]
                g += const[None, :]
                np.maximum(g, 0, out=g)
                np.minimum(mind[s:e], g.min(axis=1), out=mind[s:e])
        mind[already] = -1.0
        idx = int(np.argmax(mind))
    else:
        idx = first

    picks: list[int] = []
    for i in range(k):
        picks.append(idx)
        if progress is not None:
            progress(1)
        if i == k - 1:
            break
        C, const = centres([idx])
        cand = None if screen is None else screen.candidates(idx, C[0], const[0], mind)
        if cand is not None:
            if cand.size:
                out = Xw[cand] @ C[0]
                out *= -2
                out += sqn[cand]
                out += const[0]
                np.maximum(out, 0, out=out)
                mind[cand] = np.minimum(mind[cand], out)
        else:
            for s, e in blocks:
                out = buf[s:e]
                np.matmul(block(s, e), C[0], out=out)
                out *= -2
                out += sqn[s:e]  # |x - mu|^2 - 2 x.(c - mu)
                out += const[0]
                np.maximum(out, 0, out=out)
                np.minimum(mind[s:e], out, out=mind[s:e])
        mind[idx] = -1.0
        idx = int(np.argmax(mind))
    return picks


class _Fp16Screen:
    """Finds, from a float16 copy of X, the rows whose nearest-centre distance a new centre may lower.

    The float32 step costs one read of X (4 bytes per element); on CPUs with fast float16
    matrix-vector kernels a float16 read costs about half, and a step then touches float32 X only
    at the few rows near the new centre. The screen never changes the picks: a row is skipped
    only when a bound on the float16 result's rounding error proves its float32 distance to the
    new centre is not below its current nearest-centre distance.

    Error bound (u = 2^-11, float16 unit roundoff; g = d * 2^-24, float32 accumulation): the
    float16 copy holds ``s * (x - mu)`` (s a power of two keeping dot products far from float16
    overflow), so each element is off by at most ``u |s x_j| + 2^-25``. The dot product of two
    such rows, accumulated in float32 and rounded to float16, is then off from the exact one by
    at most ``(3u + g + 3u^2) |x - mu| |c - mu| s^2`` plus absolute terms from float16 subnormals. The float32
    distance it is compared with carries its own rounding (``g |x| |c - mu|`` for the
    product, a few ulps for the sums). The margin used is twice the sum of these.
    """

    def __init__(self, torch, Xh: Any, scale: float, per_cn: np.ndarray, base: np.ndarray, sqn: np.ndarray):
        self.torch, self.Xh, self.scale = torch, Xh, scale
        self.per_cn, self.base, self.sqn = per_cn, base, sqn
        self.approx = np.empty(Xh.shape[0], dtype=np.float32)
        self.margin = np.empty(Xh.shape[0], dtype=np.float32)

    @classmethod
    def build(cls, Xw: np.ndarray, mu: np.ndarray, sqn: np.ndarray, *, C0: np.ndarray, calibrate: bool):
        import torch

        n, d = Xw.shape
        max_sq = float(sqn.max()) if n else 0.0
        if not max_sq > 0:
            return None
        # products stay below 2^14 in float16: a wide margin under its 65504 maximum
        scale = float(2.0 ** np.floor(np.log2(np.sqrt(2.0 ** 14 / max_sq))))
        Xh = torch.empty((n, d), dtype=torch.float16)
        step = max(1, _CHUNK_BYTES // (4 * d))
        for s in range(0, n, step):
            xb = (Xw[s:s + step] - mu) * np.float32(scale)
            Xh[s:s + step] = torch.from_numpy(xb).to(torch.float16)
        if calibrate and not cls._faster(torch, Xw, Xh, C0):
            return None
        u, g = 2.0 ** -11, d * 2.0 ** -24
        sqn64 = sqn.astype(np.float64)
        xn = np.sqrt(sqn64)
        xr = np.concatenate([np.sqrt(np.einsum("ij,ij->i", Xw[s:s + step], Xw[s:s + step], dtype=np.float64))
                             for s in range(0, n, step)])
        tiny = 2.0 ** -25 * np.sqrt(d) / scale  # float16 subnormals' absolute error, per unit of norm
        per_cn = 2 * (2 * (3 * u + g + 3 * u * u) * xn + 2 * g * xr + 2 * tiny)  # times |c - mu|
        absolute = 2 * (16 * 2.0 ** -24 * sqn64 + 2 * tiny * xn + 2 * 2.0 ** -25 / scale ** 2)
        return cls(torch, Xh, scale, per_cn.astype(np.float32), (sqn64 - absolute).astype(np.float32), sqn)

    @staticmethod
    def _faster(torch, Xw, Xh, c) -> bool:
        """Whether a float16 pass takes at most _SCREEN_MAX_RATIO of a float32 pass here (best of 3)."""
        import time

        ch = torch.from_numpy(np.ascontiguousarray(c, dtype=np.float32)).to(torch.float16)
        out = np.empty(Xw.shape[0], dtype=np.float32)
        best32 = best16 = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            np.matmul(Xw, c, out=out)
            best32 = min(best32, time.perf_counter() - t)
            t = time.perf_counter()
            torch.mv(Xh, ch)
            best16 = min(best16, time.perf_counter() - t)
        return best16 <= _SCREEN_MAX_RATIO * best32

    def candidates(self, idx: int, C: np.ndarray, const: float, mind: np.ndarray) -> np.ndarray | None:
        """Rows whose float32 distance to centre ``idx`` may be below ``mind``; None: do a full pass."""
        r = self.torch.mv(self.Xh, self.Xh[idx]).numpy()  # s^2 (x - mu).(c - mu) in float16
        sqc = float(self.sqn[idx])
        cn = np.float32(np.sqrt(sqc))
        slack = 2 * 16 * 2.0 ** -24 * (abs(float(const)) + sqc)
        approx, margin = self.approx, self.margin
        np.multiply(r, np.float32(-2.0 / self.scale ** 2), out=approx)
        approx += self.base  # |x - mu|^2 less its absolute error terms
        approx += np.float32(sqc - slack)
        np.multiply(self.per_cn, cn, out=margin)
        approx -= margin  # a lower bound on the float32 distance to the new centre
        cand = np.flatnonzero(approx < mind)
        return None if cand.size > _SCREEN_MAX_CANDIDATES * len(mind) else cand
