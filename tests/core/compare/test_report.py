"""report.html opened in headless Chromium: it renders offline, with its plots, into a screenshot that is not blank."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import zlib

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# CI installs Chromium (.ci/run), so there a missing browser is a failure, never a silent skip.
pytestmark = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                                reason="needs Chromium (`apt-get install -y chromium`; .ci/run does)")


def chromium(tmp_path, *args):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def decode_png(data: bytes) -> np.ndarray:
    """RGB pixels of an 8-bit, non-interlaced RGB or RGBA PNG (what Chromium writes), without an image library."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        n, = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    assert depth == 8 and ctype in (2, 6) and interlace == 0, (depth, ctype, interlace)
    bpp = 3 if ctype == 2 else 4
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(h, w * bpp + 1)
    out = np.zeros((h, w * bpp), dtype=np.uint8)
    prior = np.zeros(w * bpp, dtype=np.int64)
    for y in range(h):
        f, line = int(raw[y, 0]), raw[y, 1:].astype(np.int64)
        if f == 0:
            cur = line
        elif f == 1:  # Sub: a running sum along the row, per channel
            cur = np.cumsum(line.reshape(w, bpp), axis=0).reshape(-1) % 256
        elif f == 2:  # Up
            cur = (line + prior) % 256
        else:  # Average and Paeth depend on the reconstructed left byte: byte by byte
            ln, pr, c = line.tolist(), prior.tolist(), [0] * line.size
            for x in range(line.size):
                a = c[x - bpp] if x >= bpp else 0
                if f == 3:
                    c[x] = (ln[x] + (a + pr[x]) // 2) & 255
                else:
                    b, d = pr[x], (pr[x - bpp] if x >= bpp else 0)
                    p = a + b - d
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - d)
                    c[x] = (ln[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else d)) & 255
            cur = np.asarray(c, dtype=np.int64)
        out[y] = cur
        prior = cur
    return out.reshape(h, w, bpp)[:, :, :3]


def test_report_is_self_contained(compared):
    html = (compared["out"] / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing to fetch
    assert "<script" not in html


def test_report_renders_its_plots_in_headless_chromium(compared, tmp_path):
    url = (compared["out"] / "report.html").resolve().as_uri()
    dom = chromium(tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    for kind in ("heatmap", "histogram", "bars", "stacked", "legend"):
        assert f'data-kind="{kind}"' in html, kind
    names = [s["name"] for s in compared["data"]["strategies"]]
    # one heat-map cell per pair, each carrying its Jaccard value
    heat = re.search(r'<svg[^>]*data-kind="heatmap".*?</svg>', html, re.S).group(0)
    assert len(re.findall(r'<rect[^>]*data-value="[0-9.]+"', heat)) == len(names) ** 2
    # one histogram per score and length column that is not constant over the pool, each with a line per strategy
    sections = [*compared["data"]["scores"].values(), *compared["data"]["lengths"].values()]
    n_cols = sum(1 for d in sections if sum(1 for c in d["pool"]["hist"] if c) > 1)
    assert n_cols >= 5
    assert html.count('data-kind="histogram"') == n_cols
    assert html.count('class="series"') == n_cols * len(names)
    assert "Label agreement" in html and "Coverage" in html

    png = tmp_path / "report.png"
    shot = chromium(tmp_path, f"--screenshot={png}", "--window-size=1280,2000", url)
    assert shot.returncode == 0 and png.is_file(), shot.stderr[-2000:]
    px = decode_png(png.read_bytes())
    assert px.shape == (2000, 1280, 3)
    colours = np.unique(px.reshape(-1, 3), axis=0)
    assert len(colours) > 50  # text, a heat map, bars and lines, not a blank or one-colour page
    assert (px != 255).any(axis=2).mean() > 0.02
