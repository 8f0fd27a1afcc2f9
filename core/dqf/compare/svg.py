"""Hand-written inline SVG charts for report.html: heat map, overlaid histograms, bars, stacked shares."""

from __future__ import annotations

from html import escape
from typing import Sequence

from dqf.compare.table import fmt

# Tableau 10: distinguishable, and readable by most colour-blind viewers.
PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac"]
FONT = 'font-family="system-ui, sans-serif" font-size="11"'


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _svg(kind: str, w: float, h: float, body: list[str], title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" data-kind="{kind}" width="{w:.0f}" '
            f'height="{h:.0f}" viewBox="0 0 {w:.0f} {h:.0f}" role="img" {FONT}><title>{escape(title)}</title>'
            + "".join(body) + "</svg>")


def _text_width(s: str) -> float:
    return 6.2 * len(s)  # about right for 11px sans-serif; labels are cut rather than measured


def _cut(s: str, n: int = 28) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def heatmap(names: Sequence[str], values: Sequence[Sequence[float | None]], counts: Sequence[Sequence[int]],
            title: str) -> str:
    """Square matrix, white (0) to dark blue (1); each cell shows its value and count."""
    n = len(names)
    cell = 64
    left = min(200, max(_text_width(_cut(x)) for x in names) + 12)
    top = left  # column labels are written at 45 degrees, so they need as much height as row labels need width
    w, h = left + n * cell + top * 0.72, top + n * cell + 10  # the last slanted label runs past the grid
    body = []
    for i in range(n):
        body.append(f'<text x="{left - 6}" y="{top + i * cell + cell / 2 + 4}" text-anchor="end">'
                    f'{escape(_cut(names[i]))}</text>')
        x = left + i * cell + cell / 2
        body.append(f'<text transform="translate({x},{top - 6}) rotate(-45)" text-anchor="start">'
                    f'{escape(_cut(names[i]))}</text>')
        for j in range(n):
            v = values[i][j]
            if v is None:
                fill, ink = "#eeeeee", "#333"
            else:
                # Linear from white to #1f4e99: the darker, the more two selections share.
                r, g, b = (round(255 + (c - 255) * v) for c in (0x1f, 0x4e, 0x99))
                fill, ink = f"rgb({r},{g},{b})", "#fff" if v > 0.55 else "#222"
            cx, cy = left + j * cell, top + i * cell
            body.append(f'<rect x="{cx}" y="{cy}" width="{cell - 2}" height="{cell - 2}" fill="{fill}" '
                        f'data-value="{"" if v is None else f"{v:.4f}"}"><title>{escape(names[i])} / '
                        f'{escape(names[j])}: Jaccard {fmt(v)}, {counts[i][j]:,} rows in both</title></rect>')
            body.append(f'<text x="{cx + cell / 2 - 1}" y="{cy + cell / 2 - 2}" text-anchor="middle" fill="{ink}">'
                        f'{fmt(v, 2)}</text>')
            body.append(f'<text x="{cx + cell / 2 - 1}" y="{cy + cell / 2 + 12}" text-anchor="middle" fill="{ink}" '
                        f'font-size="9">{counts[i][j]:,}</text>')
    return _svg("heatmap", w, h, body, title)


def histogram(edges: Sequence[float], pool: Sequence[int], series: Sequence[tuple[str, str, Sequence[int], bool]],
              title: str) -> str:
    """The pool's shares per bin as grey bars, each selection's as a coloured step line (dashed: baselines).

    Shares, not counts, so a selection of 100 rows and a pool of 50,000 read on one axis.
    """
    W, H, L, R, T, B = 470, 210, 44, 24, 10, 34
    pw, ph = W - L - R, H - T - B
    nb = len(pool)

    def shares(h):
        tot = sum(h)
        return [c / tot if tot else 0.0 for c in h]

    ps = shares(pool)
    ss = [(name, col, shares(h), dashed) for name, col, h, dashed in series]
    ymax = max([*ps, *[v for _, _, s, _ in ss for v in s], 1e-9]) * 1.08
    bw = pw / nb

    def y(v):
        return T + ph - ph * v / ymax

    body = [f'<line x1="{L}" y1="{T + ph}" x2="{L + pw}" y2="{T + ph}" stroke="#888"/>',
            f'<line x1="{L}" y1="{T}" x2="{L}" y2="{T + ph}" stroke="#888"/>']
    for i, v in enumerate(ps):
        body.append(f'<rect class="pool" x="{L + i * bw + 0.5:.1f}" y="{y(v):.1f}" width="{max(bw - 1, 0.5):.1f}" '
                    f'height="{T + ph - y(v):.1f}" fill="#d5d5d5" data-value="{v:.4f}"/>')
    for name, col, s, dashed in ss:
        pts = []
        for i, v in enumerate(s):
            pts += [f"{L + i * bw:.1f},{y(v):.1f}", f"{L + (i + 1) * bw:.1f},{y(v):.1f}"]
        dash = ' stroke-dasharray="5,3"' if dashed else ""
        body.append(f'<polyline class="series" points="{" ".join(pts)}" fill="none" stroke="{col}" '
                    f'stroke-width="1.8"{dash}><title>{escape(name)}</title></polyline>')
    for frac in (0, 0.5, 1):
        x = L + pw * frac
        val = edges[0] + (edges[-1] - edges[0]) * frac
        body.append(f'<text x="{x:.1f}" y="{T + ph + 14}" text-anchor="middle">{fmt(float(val))}</text>')
    body.append(f'<text x="{L - 4}" y="{T + 8}" text-anchor="end">{ymax / 1.08:.0%}</text>')
    body.append(f'<text x="{L - 4}" y="{T + ph}" text-anchor="end">0</text>')
    body.append(f'<text x="{L + pw / 2}" y="{H - 4}" text-anchor="middle" fill="#555">{escape(title)}</text>')
    return _svg("histogram", W, H, body, title)


def bars(items: Sequence[tuple[str, float | None, str]], title: str, digits: int = 3) -> str:
    """Horizontal bars, one per item, value written at the end; a missing value draws no bar."""
    left = min(200, max([_text_width(_cut(n)) for n, _, _ in items] + [40]) + 10)
    W, row = left + 300, 20
    H = 24 + row * len(items) + 6
    vmax = max([abs(v) for _, v, _ in items if v is not None] + [1e-12])
    body = [f'<text x="0" y="14" font-weight="bold">{escape(title)}</text>']
    for i, (name, v, col) in enumerate(items):
        yy = 24 + i * row
        body.append(f'<text x="{left - 6}" y="{yy + 13}" text-anchor="end">{escape(_cut(name))}</text>')
        if v is None:
            body.append(f'<text x="{left + 4}" y="{yy + 13}" fill="#888">–</text>')
            continue
        bw = max(1.0, 230 * abs(v) / vmax)
        body.append(f'<rect x="{left}" y="{yy + 3}" width="{bw:.1f}" height="{row - 6}" fill="{col}" '
                    f'data-value="{v:.6g}"><title>{escape(name)}: {fmt(v, 6)}</title></rect>')
        body.append(f'<text x="{left + bw + 4:.1f}" y="{yy + 13}">{fmt(v, digits)}</text>')
    return _svg("bars", W, H, body, title)


def stacked(rows: Sequence[tuple[str, dict[str, int]]], values: Sequence[str], title: str) -> str:
    """One 100% bar per row (pool, strategies), split by value, with a legend below."""
    left = min(200, max(_text_width(_cut(n)) for n, _ in rows) + 10)
    W, row, pw = left + 420, 20, 400
    legend_rows = (len(values) + 3) // 4
    H = 24 + row * len(rows) + 10 + 16 * legend_rows
    body = [f'<text x="0" y="14" font-weight="bold">{escape(title)}</text>']
    for i, (name, counts) in enumerate(rows):
        yy = 24 + i * row
        body.append(f'<text x="{left - 6}" y="{yy + 13}" text-anchor="end">{escape(_cut(name))}</text>')
        tot = sum(counts.values())
        x = float(left)
        for j, v in enumerate(values):
            share = counts.get(v, 0) / tot if tot else 0.0
            if share <= 0:
                continue
            body.append(f'<rect x="{x:.1f}" y="{yy + 3}" width="{pw * share:.1f}" height="{row - 6}" '
                        f'fill="{color(j)}" data-value="{share:.4f}"><title>{escape(name)}: {escape(v)} '
                        f'{share:.1%} ({counts.get(v, 0):,} rows)</title></rect>')
            x += pw * share
    y0 = 24 + row * len(rows) + 10
    for j, v in enumerate(values):
        lx, ly = left + (j % 4) * 105, y0 + (j // 4) * 16
        body.append(f'<rect x="{lx}" y="{ly}" width="10" height="10" fill="{color(j)}"/>'
                    f'<text x="{lx + 14}" y="{ly + 9}">{escape(_cut(v, 15))}</text>')
    return _svg("stacked", W, H, body, title)


def legend(series: Sequence[tuple[str, str, bool]]) -> str:
    """A one-line key for the histograms: grey bars for the pool, a line per strategy."""
    W = 20 + sum(40 + _text_width(_cut(n)) for n, _, _ in series) + 60
    body = ['<rect x="0" y="4" width="14" height="10" fill="#d5d5d5"/><text x="18" y="13">pool</text>']
    x = 60.0
    for name, col, dashed in series:
        dash = ' stroke-dasharray="5,3"' if dashed else ""
        body.append(f'<line x1="{x:.1f}" y1="9" x2="{x + 22:.1f}" y2="9" stroke="{col}" stroke-width="2"{dash}/>'
                    f'<text x="{x + 26:.1f}" y="13">{escape(_cut(name))}</text>')
        x += 40 + _text_width(_cut(name))
    return _svg("legend", W, 18, body, "legend")
