"""The terminal view of compare.json: rich tables of sizes, coverage, overlap, medians, mix, labels, fine-tuning."""

from __future__ import annotations

from typing import Any


def fmt(x: Any, digits: int = 3) -> str:
    """Numbers for people: thousands separators for counts, ``digits`` significant digits otherwise."""
    if x is None:
        return "–"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int):
        return f"{x:,}"
    if x == 0:
        return "0"
    if abs(x) >= 10 ** digits:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def tables(data: dict) -> list:
    """One rich Table per section of ``data`` (compare.json) that has something to show."""
    from rich.table import Table

    names = [s["name"] for s in data["strategies"]]
    out = []

    t = Table(title=f"dqf compare: {len(names)} strategies on a pool of {data['pool']['rows']:,} rows "
                    f"({data['pool']['input']})")
    cov = (data.get("coverage") or {}).get("strategies")
    heads = [("strategy", "left"), ("kind", "left"), ("size", "right")]
    if cov:
        heads += [("radius", "right"), ("mean nearest", "right"), ("mean pairwise", "right")]
    for col, just in heads:
        t.add_column(col, justify=just)
    for s in data["strategies"]:
        cells = [s["name"], s["kind"], fmt(s["size"])]
        if cov:
            c = cov[s["name"]]
            pw = fmt(c["mean_pairwise"]) + ("*" if c.get("pairs_sampled") else "")
            cells += [fmt(c["radius"]), fmt(c["mean_nearest"]), pw]
        t.add_row(*cells)
    if cov:
        t.caption = (f"coverage: Euclidean distance between {data['embedder']['plugin']} embeddings of the "
                     f"{data['coverage']['field'] or 'row'}; radius = farthest pool row from its nearest selected "
                     "row (lower covers better); * = sampled pairs")
    out.append(t)

    ov = data["overlap"]
    t = Table(title="overlap: rows in both (Jaccard)")
    t.add_column("")
    for n in ov["names"]:
        t.add_column(n, justify="right")
    for i, n in enumerate(ov["names"]):
        t.add_row(n, *[f"{ov['counts'][i][j]:,} ({fmt(ov['jaccard'][i][j], 2)})" for j in range(len(ov["names"]))])
    out.append(t)

    dists = [(c, d) for c, d in data["scores"].items()] + [(f"length:{c}", d) for c, d in data["lengths"].items()]
    if dists:
        t = Table(title="medians (booleans: share true): pool and each selection")
        t.add_column("column", no_wrap=True, min_width=min(40, max(len(c) for c, _ in dists)))
        t.add_column("pool", justify="right")
        for n in names:
            t.add_column(n, justify="right")

        def mid(d, s):
            return f"{s['mean']:.1%}" if d.get("boolean") and s["mean"] is not None else fmt(s["quantiles"]["p50"])

        for c, d in dists:
            t.add_row(c, mid(d, d["pool"]), *[mid(d, d["strategies"][n]) for n in names])
        out.append(t)

    for field, m in data.get("mix", {}).items():
        t = Table(title=f"mix by {field}: share of rows")
        t.add_column(field)
        t.add_column("pool", justify="right")
        for n in names:
            t.add_column(n, justify="right")
        tot = {n: max(1, sum(m["strategies"][n].values())) for n in names}
        ptot = max(1, sum(m["pool"].values()))
        for v in m["values"]:
            t.add_row(v, f"{m['pool'][v] / ptot:.1%}", *[f"{m['strategies'][n][v] / tot[n]:.1%}" for n in names])
        out.append(t)

    labels = data.get("labels") or {}
    if labels:
        t = Table(title="label agreement: ROC AUC (binary labels) or Spearman's rho (graded), over the labelled pool")
        t.add_column("column")
        for ln, ls in labels.items():
            t.add_column(f"{ln} ({'AUC' if ls['metric'] == 'auc' else 'rho'})", justify="right")
        cols = list(next(iter(labels.values()))["columns"])
        for c in cols:
            t.add_row(c, *[fmt(ls["columns"][c][ls["metric"]]) for ls in labels.values()])
        out.append(t)
        t = Table(title="labels in each selection: mean label (positive rate for binary), lift over the pool")
        t.add_column("strategy")
        for ln in labels:
            t.add_column(ln, justify="right")
        t.add_row("pool", *[fmt(ls["pool"]["mean"]) for ls in labels.values()])
        for n in names:
            t.add_row(n, *[f"{fmt(ls['strategies'][n]['mean'])} ({fmt(ls['strategies'][n]['lift'], 2)}x)"
                           for ls in labels.values()])
        out.append(t)

    ft = data.get("finetune")
    if ft:
        out.append(finetune_table(ft))
    return out


def finetune_table(ft: dict):
    from rich.table import Table

    t = Table(title=f"fine-tune: {ft['options'].get('model', 'default model')}, evaluated on "
                    f"{ft['heldout']['rows']:,} held-out rows ({ft['heldout']['source']})")
    for col, just in (("strategy", "left"), ("eval loss", "right"), ("judge mean", "right"),
                      ("train rows", "right"), ("steps", "right"), ("seconds", "right")):
        t.add_column(col, justify=just)
    for name, r in ft["strategies"].items():
        t.add_row(name, fmt(r.get("eval_loss"), 4), fmt(r.get("judge_mean"), 4), fmt(r.get("train_rows")),
                  fmt(r.get("steps")), fmt(r.get("seconds")))
    t.caption = "eval loss: nats per reference-answer token (lower is better); judge mean: higher is better"
    return t


def print_tables(data: dict, console) -> None:
    for t in tables(data):
        console.print(t)
