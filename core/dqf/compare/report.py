"""report.html: compare.json as one self-contained page (inline CSS and SVG, no script, no network)."""

from __future__ import annotations

from html import escape
from typing import Any

from dqf.compare import svg
from dqf.compare.table import fmt

CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1200px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
h3 { font-size: 14px; margin: 14px 0 4px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f4f4f4; } .note { color: #555; font-size: 13px; max-width: 900px; }
.grid { display: flex; flex-wrap: wrap; gap: 18px; } .fig { margin: 4px 0; }
.good { background: #dff0d8; } .bad { background: #f8dcdc; }
"""


def _table(header: list[str], rows: list[list[Any]], numeric_from: int = 1, classes=None) -> str:
    h = "".join(f"<th>{escape(str(x))}</th>" for x in header)
    body = []
    for r, row in enumerate(rows):
        cells = []
        for i, v in enumerate(row):
            cls = ["n"] if i >= numeric_from else []
            if classes and classes[r][i]:
                cls.append(classes[r][i])
            attr = f' class="{" ".join(cls)}"' if cls else ""
            cells.append(f"<td{attr}>{escape(v if isinstance(v, str) else fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{h}</tr>{''.join(body)}</table>"


def _series(data: dict) -> list[tuple[str, str, bool]]:
    return [(s["name"], svg.color(i), s["kind"] == "baseline") for i, s in enumerate(data["strategies"])]


def _distributions(section: dict, data: dict, label: str) -> str:
    series = _series(data)
    parts = [svg.legend(series), '<div class="grid">']
    constant = []
    for col, d in section.items():
        if sum(1 for c in d["pool"]["hist"] if c) <= 1:  # one value everywhere: a plot would show one bar
            constant.append(col)
            continue
        lines = [(n, c, d["strategies"][n]["hist"], dashed) for n, c, dashed in series]
        parts.append(f'<div class="fig"><h3>{escape(col)}</h3>'
                     + svg.histogram(d["bins"], d["pool"]["hist"], lines, f"{label}{col}") + "</div>")
    parts.append("</div>")
    if constant:
        parts.append(f"<p class=note>Not plotted, one value over the whole pool: {escape(', '.join(constant))}.</p>")
    qs = list(next(iter(section.values()))["pool"]["quantiles"]) if section else []
    rows = []
    for col, d in section.items():
        for who, s in [("pool", d["pool"]), *[(n, d["strategies"][n]) for n, _, _ in series]]:
            rows.append([col, who, s["n"], s["mean"], *[s["quantiles"][q] for q in qs]])
    parts.append("<details><summary>quantiles</summary>"
                 + _table(["column", "rows", "n", "mean", *qs], rows, numeric_from=2) + "</details>")
    return "".join(parts)


def render_html(data: dict) -> str:
    names = [s["name"] for s in data["strategies"]]
    series = _series(data)
    cov = (data.get("coverage") or {}).get("strategies")
    emb = data.get("embedder")
    if emb:
        about_emb = (f'Embedder: <code>{escape(emb["plugin"])}</code> '
                     f'{escape(str(emb.get("options", {}).get("model", "")))}, field '
                     f'<code>{escape(str(data["coverage"]["field"]))}</code>. ')
    else:
        about_emb = "No embedder, so no coverage numbers. "
    out = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>dqf compare</title>"
           f"<style>{CSS}</style></head><body>",
           f"<h1>dqf compare: {len(names)} strategies</h1>",
           f'<p class="note">Pool: {data["pool"]["rows"]:,} rows from <code>{escape(data["pool"]["input"])}</code>. '
           f'{about_emb}Written by dqf {escape(data["dqf_version"])} at {escape(data["created_at"])}; every number '
           f'is in compare.json beside this file.</p>']

    out.append("<h2>Strategies</h2>")
    rows = []
    for s in data["strategies"]:
        row = [s["name"], s["kind"], s.get("path") or s.get("note") or "", s["size"]]
        if cov:
            c = cov[s["name"]]
            row += [c["radius"], c["mean_nearest"], c["median_nearest"],
                    (fmt(c["mean_pairwise"]) + (" (sampled)" if c.get("pairs_sampled") else ""))
                    if c["mean_pairwise"] is not None else None]
        rows.append(row)
    head = ["strategy", "kind", "from", "size"]
    if cov:
        head += ["radius", "mean nearest", "median nearest", "mean pairwise"]
    out.append(_table(head, rows, numeric_from=3))

    ov = data["overlap"]
    out.append("<h2>Overlap</h2><p class=note>Jaccard index (rows in both / rows in either) and the number of "
               "rows in both; the diagonal holds each selection's size.</p>")
    out.append(svg.heatmap(ov["names"], ov["jaccard"], ov["counts"], "overlap (Jaccard)"))

    if cov:
        out.append(_coverage(cov, series))

    if data["scores"]:
        out.append("<h2>Score distributions</h2><p class=note>Share of rows per bin: the pool as grey bars, each "
                   "selection as a line (dashed: baselines). Bins span the pool's 1st to 99th percentile; values "
                   "beyond fall in the end bins.</p>")
        out.append(_distributions(data["scores"], data, ""))
    out.append("<h2>Lengths</h2><p class=note>Whitespace-separated words (and tokenizer tokens when one was "
               "named) of the instruction, input and output.</p>")
    out.append(_distributions(data["lengths"], data, "length: "))

    for field, m in (data.get("mix") or {}).items():
        out.append(f"<h2>Mix by <code>{escape(field)}</code></h2>")
        out.append(svg.stacked([("pool", m["pool"]), *[(n, m["strategies"][n]) for n in names]], m["values"],
                               f"share of rows by {field}"))

    labels = data.get("labels") or {}
    if labels:
        out.append("<h2>Label agreement</h2><p class=note>How well each column ranks the labelled pool rows: ROC "
                   "AUC for binary labels (1 = every positive ranked above every negative, 0.5 = chance, below 0.5 = "
                   "the column ranks them the wrong way round), Spearman's rho for graded labels. Green: AUC ≥ 0.6 or "
                   "rho ≥ 0.2; red: AUC ≤ 0.4 or rho ≤ -0.2.</p>")
        cols = list(next(iter(labels.values()))["columns"])
        rows, classes = [], []
        for c in cols:
            vals = [ls["columns"][c][ls["metric"]] for ls in labels.values()]
            rows.append([c, *vals])
            cl = [""]
            for v, ls in zip(vals, labels.values()):
                hi, lo = (0.6, 0.4) if ls["metric"] == "auc" else (0.2, -0.2)
                cl.append("" if v is None else "good" if v >= hi else "bad" if v <= lo else "")
            classes.append(cl)
        out.append(_table(["column", *[f"{n} ({ls['metric']}, n={ls['pool']['n']:,})" for n, ls in labels.items()]],
                          rows, classes=classes))
        out.append('<p class=note>Mean label in each selection (for a binary label: the share of positives) '
                   'against the pool\'s.</p><div class="grid">')
        for ln, ls in labels.items():
            out.append(svg.bars([("pool", ls["pool"]["mean"], "#999"),
                                 *[(n, ls["strategies"][n]["mean"], c) for n, c, _ in series]], f"{ln}: mean label"))
        out.append("</div>")

    ft = data.get("finetune")
    if ft:
        out.append(_finetune(ft, {n: c for n, c, _ in series}))
    out.append("</body></html>\n")
    return "".join(out)


def _coverage(cov: dict, series) -> str:
    parts = ["<h2>Coverage</h2><p class=note>Euclidean distances between embeddings. Radius: the largest "
             "distance from any pool row to its nearest selected row (k-center's objective). Mean nearest: the "
             "same distance averaged over the pool. Lower means the selection leaves less of the pool far away. "
             "Mean pairwise: the average distance between two selected rows (higher = more spread out).</p>"
             '<div class="grid">']
    for key, title in (("radius", "radius"), ("mean_nearest", "mean nearest-selected distance"),
                       ("mean_pairwise", "mean pairwise distance")):
        parts.append(svg.bars([(n, cov[n][key], c) for n, c, _ in series], title))
    parts.append("</div>")
    return "".join(parts)


def _finetune(ft: dict, colors: dict[str, str]) -> str:
    opts = ft.get("options", {})
    res = ft.get("strategies", {})
    parts = [f"<h2>Fine-tune</h2><p class=note>The same model (<code>{escape(str(opts.get('model', 'default')))}"
             f"</code>) fine-tuned on each selection under one budget, then evaluated on "
             f"{ft['heldout']['rows']:,} held-out rows ({escape(ft['heldout']['source'])}). Eval loss: mean loss per "
             f"token of the reference answers (lower is better). Judge mean: the judge's mean score of the "
             f"generated answers (higher is better).</p>"]
    rows = [[n, r.get("eval_loss"), r.get("judge_mean"), r.get("train_rows"), r.get("steps"), r.get("seconds")]
            for n, r in res.items()]
    parts.append(_table(["strategy", "eval loss", "judge mean", "train rows", "steps", "seconds"], rows))
    parts.append('<div class="grid">')
    for key, title in (("eval_loss", "eval loss (lower is better)"), ("judge_mean", "judge mean (higher is better)")):
        parts.append(svg.bars([(n, r.get(key), colors.get(n, "#999")) for n, r in res.items()], title, 4))
    parts.append("</div>")
    return "".join(parts)
