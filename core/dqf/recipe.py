"""Loads a TOML recipe and validates all of it (keys, plugins, options, references, columns) before anything runs."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator

from dqf.errors import DataError, DqfError, PluginError, RecipeError
from dqf.io.readers import inside_input
from dqf.registry import KINDS, step_kind
from dqf.where import WhereError, parse_where
from dqf.plugin import BASE_COLUMNS, DERIVED_COLUMNS, Plugin, Probe, Scorer, Workspace

STEP_KINDS = tuple(k.step_key for k in KINDS.values() if k.step_key)
_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class InputConfig(_Strict):
    path: Optional[str] = None
    #: A LLaMA-Factory registry (data/dataset_info.json) and the entry to read: sets path, format and fields.
    dataset_info: Optional[str] = None
    name: Optional[str] = None
    format: Literal["auto", "alpaca", "sharegpt", "messages"] = "auto"
    fields: dict[Literal["instruction", "input", "output", "conversations", "messages"], str] = {}
    on_bad_row: Literal["error", "quarantine"] = "error"
    #: Which split of a Hugging Face-style folder or glob to read (train-00000-of-00002.parquet, train.jsonl, train/).
    split: Optional[str] = None


class OutputConfig(_Strict):
    dir: str
    select: Optional[list[str]] = None
    format: Literal["jsonl", "json", "parquet", "sharegpt", "messages"] = "jsonl"

    @field_validator("select", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return [v] if isinstance(v, str) else v


class CacheConfig(_Strict):
    dir: Optional[str] = None
    enabled: bool = True


class WorkerConfig(_Strict):
    """How the Ray engine runs a plugin's batches on the cluster (ignored by the local engine)."""

    compute: Literal["auto", "actors", "tasks"] = "auto"  # auto: actors for plugins with a model or setup()
    concurrency: Optional[PositiveInt] = None  # actors in the pool (default: GPUs / num_gpus, else 1) or tasks at once
    num_cpus: Optional[float] = Field(default=None, gt=0)
    num_gpus: Optional[float] = Field(default=None, ge=0)


class EngineConfig(WorkerConfig):
    """``[engine]``: where steps run. The defaults above apply to every step; ``steps.<id>`` and
    ``plugins.<name>`` override them (a step's settings win over its plugin's)."""

    kind: Literal["local", "ray"] = "local"
    address: Optional[str] = None  # Ray: "auto", "ray://host:10001", ...; default: RAY_ADDRESS or a local cluster
    # Ray: a folder of 2+ shards is read by one Ray task per file ("cluster"), or on the driver ("driver")
    read: Literal["cluster", "driver"] = "cluster"
    steps: dict[str, WorkerConfig] = {}
    plugins: dict[str, WorkerConfig] = {}


class StepConfig(_Strict):
    id: str
    from_: Optional[str] = Field(default=None, alias="from")
    score: Optional[dict[str, Any]] = None
    select: Optional[dict[str, Any]] = None
    probe: Optional[dict[str, Any]] = None
    where: Optional[str] = None
    batch_size: Optional[PositiveInt] = None


class RecipeModel(_Strict):
    name: Optional[str] = None  # default: the recipe file's stem (see Recipe.name)
    seed: int = 0
    plugins: list[str] = []
    input: InputConfig
    output: OutputConfig
    cache: CacheConfig = CacheConfig()
    engine: EngineConfig = EngineConfig()
    steps: list[StepConfig] = Field(min_length=1)


@dataclass
class Step:
    """One validated step: its config, the plugin instance it runs, and where its rows come from."""

    index: int
    id: str
    kind: str  # "score" | "select" | "probe"
    source: str  # a step id or "input"
    plugin: Plugin
    where: Optional[str]
    batch_size: Optional[int]
    columns: dict[str, Any] = field(default_factory=dict)  # columns this step adds

    @property
    def key(self) -> str:
        return f"steps[{self.index}]"


@dataclass
class Recipe:
    """A recipe that passed validation: steps in execution order, paths resolved."""

    path: Path
    model: RecipeModel
    steps: list[Step]  # topological order
    raw: dict

    @property
    def name(self) -> str:
        return self.model.name if self.model.name is not None else Path(self.path).stem

    @property
    def seed(self) -> int:
        return self.model.seed

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def resolve(self, p: str | Path) -> Path:
        p = Path(p).expanduser()
        return p if p.is_absolute() else Path(os.path.normpath(self.base_dir / p))

    @property
    def input_path(self) -> Path:
        return self.resolve(self.model.input.path)

    @property
    def output_dir(self) -> Path:
        return self.resolve(self.model.output.dir)

    @property
    def output_steps(self) -> list[str]:
        return self.model.output.select or [self.steps_in_file_order[-1].id]

    @property
    def steps_in_file_order(self) -> list[Step]:
        return sorted(self.steps, key=lambda s: s.index)

    def step(self, step_id: str) -> Step:
        by_id = self.__dict__.get("_by_id")
        if by_id is None:  # built once: chain() looks a step up per hop
            by_id = self.__dict__["_by_id"] = {s.id: s for s in self.steps}
        return by_id[step_id]

    def chain(self, step_id: str) -> list[Step]:
        """The steps a row passes through to reach ``step_id`` (following ``from``), input first."""
        out = []
        cur = step_id
        while cur != "input":
            s = self.step(cur)
            out.append(s)
            cur = s.source
        return out[::-1]


def loc_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _pydantic_lines(exc: ValidationError, prefix: str = "") -> list[str]:
    lines = []
    for err in exc.errors():
        loc = loc_path(tuple(err["loc"]))
        key = f"{prefix}.{loc}" if prefix and loc != "(top level)" else (prefix or loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"{key}: {msg}")
    return lines


def read_toml(path: Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (some editors write one) is not TOML
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: cannot read recipe: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: TOML syntax error: {exc}") from None


def load_recipe(path: str | Path, host_factory, *, overrides: dict | None = None) -> tuple[Recipe, Any]:
    """Read and validate a recipe. ``host_factory(local_modules)`` builds the plugin host.

    Returns ``(recipe, host)``. Raises :class:`RecipeError` listing every problem found,
    each as ``file: key.path: message``.
    """
    path = Path(path)
    raw = read_toml(path)
    if overrides:
        raw = _merge(raw, overrides)
    label = str(path)
    try:
        model = RecipeModel.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(*[f"{label}: {line}" for line in _pydantic_lines(exc)]) from None

    errors: list[str] = []
    _input_source(model.input, path.parent, errors)
    local = [(path.parent / p) for p in model.plugins]
    for i, p in enumerate(local):
        if not p.is_file():
            errors.append(f"plugins[{i}]: local plugin module not found: {model.plugins[i]}")
    if errors:
        raise RecipeError(*[f"{label}: {e}" for e in errors])
    try:
        host = host_factory(local)
    except PluginError as exc:
        raise RecipeError(*[f"{label}: plugins: {line}" for line in exc.lines]) from None
    # Plugins resolve relative paths (models, reference files) against the recipe's folder.
    return _validate(path, label, raw, model, host, errors, Workspace(base_dir=path.parent.resolve()))


def _input_source(inp: InputConfig, base: Path, errors: list[str]) -> None:
    """Check that ``[input]`` names its rows one way: ``path``, or ``dataset_info`` + ``name`` (which fill in path,
    format and fields from the LLaMA-Factory entry; the registry is read because the recipe names it)."""
    if inp.dataset_info is None:
        if inp.path is None:
            errors.append("input.path: required key is missing (or give input.dataset_info and input.name)")
        elif inp.name is not None:
            errors.append("input.name: names an entry of input.dataset_info, which is not set")
        return
    if inp.path is not None:
        errors.append("input.path: give input.path or input.dataset_info, not both")
        return
    if inp.name is None:
        errors.append("input.name: required with input.dataset_info (the entry to read)")
        return
    if inp.format != "auto" or inp.fields:
        errors.append(f"input.{'format' if inp.format != 'auto' else 'fields'}: set by the dataset_info entry; "
                      f"leave it out")
        return
    from dqf.io.llamafactory import read_entry

    info = Path(inp.dataset_info).expanduser()
    try:
        entry = read_entry(info if info.is_absolute() else base / info, inp.name)
    except DataError as exc:
        errors.extend(exc.lines)
        return
    inp.path, inp.format, inp.fields = str(entry.path), entry.format, entry.fields


def _validate(path, label, raw, model, host, errors, workspace):

    steps: list[Step] = []
    seen: dict[str, int] = {}
    for i, sc in enumerate(model.steps):
        key = f"steps[{i}]"
        if not _ID.fullmatch(sc.id):  # match() would let "q\n" through ($ matches before a final newline)
            errors.append(f"{key}.id: {sc.id!r} is not a valid step id (letters, digits, '_' and '-')")
        if sc.id == "input":
            errors.append(f"{key}.id: 'input' is reserved for the recipe's input")
        if sc.id in seen:
            errors.append(f"{key}.id: duplicate step id {sc.id!r} (also steps[{seen[sc.id]}])")
        seen.setdefault(sc.id, i)
        given = [k for k in STEP_KINDS if getattr(sc, k) is not None]
        if len(given) != 1:
            what = "none" if not given else " and ".join(given)
            errors.append(f"{key}: exactly one of score / select / probe is required (got {what})")
            continue
        kind = given[0]
        plugin = instantiate(host, step_kind(kind).name, getattr(sc, kind), f"{key}.{kind}", errors, workspace=workspace)
        if plugin is None:
            continue
        source = sc.from_ if sc.from_ is not None else (model.steps[i - 1].id if i > 0 else "input")
        cols = dict(plugin.columns()) if isinstance(plugin, (Scorer, Probe)) else {}
        steps.append(Step(i, sc.id, kind, source, plugin, sc.where, sc.batch_size, cols))

    ids = {s.id for s in steps} | set(seen)
    for s in steps:
        if s.source != "input" and s.source not in ids:
            errors.append(f"{s.key}.from: no step with id {s.source!r} ({_known(ids)})")
        for dep in s.plugin.depends_on():
            if dep != "input" and dep not in ids:
                errors.append(f"{s.key}.{s.kind}: refers to step {dep!r}, which does not exist ({_known(ids)})")
    for j, sel in enumerate(model.output.select or []):
        if sel not in ids and sel != "input":
            errors.append(f"output.select[{j}]: no step with id {sel!r} ({_known(ids)})")
    errors.extend(_check_engine(model.engine, ids, steps))
    if errors:
        raise RecipeError(*[f"{label}: {e}" for e in errors])

    ordered, cycle = _toposort(steps)
    if cycle:
        first = next(s for s in steps if s.id == cycle[0])
        raise RecipeError(f"{label}: {first.key}.from: steps form a cycle: {' -> '.join(cycle)}")
    recipe = Recipe(path=path, model=model, steps=ordered, raw=raw)
    for key, folder in (("output.dir", model.output.dir), ("cache.dir", model.cache.dir)):
        problem = folder and inside_input(recipe.input_path, recipe.resolve(folder), key)
        if problem:
            errors.append(problem)
    errors.extend(_check_columns(recipe))
    if errors:
        raise RecipeError(*[f"{label}: {e}" for e in errors])
    return recipe, host


def instantiate(host, kind: str, spec: Any, keypath: str, errors: list[str], *,
                workspace: Workspace | None = None) -> Plugin | None:
    """Validate ``spec`` ({plugin = name, **options}) as a ``kind`` plugin and build it, nested plugins included.

    The plugin and its nested plugins get ``workspace`` before their ``check()`` runs. Problems are
    appended to ``errors`` as ``keypath.sub.key: message``; returns None then.
    """
    if isinstance(spec, BaseModel):
        spec = {"plugin": getattr(spec, "plugin", None), **(spec.model_extra or {})}
    if not isinstance(spec, dict):
        errors.append(f"{keypath}: expected a table like {{ plugin = \"name\", ... }}")
        return None
    spec = dict(spec)
    pname = spec.pop("plugin", None)
    if not isinstance(pname, str):
        errors.append(f"{keypath}.plugin: required key is missing" if pname is None
                      else f"{keypath}.plugin: expected a plugin name")
        return None
    try:
        info = host.get(kind, pname)
    except PluginError as exc:
        errors.append(f"{keypath}.plugin: {exc}")
        return None
    try:
        options = info.cls.Options.model_validate(spec)
    except ValidationError as exc:
        errors.extend(_pydantic_lines(exc, prefix=keypath))
        return None
    try:
        plugin = info.cls(options)
    except Exception as exc:  # a plugin rejecting a combination of options
        errors.append(f"{keypath}: {exc}")
        return None
    if workspace is not None:
        plugin.workspace = workspace
    ok = True
    for fname, nkind in info.cls.nested_plugins.items():
        nspec = getattr(options, fname, None)
        if nspec is None or isinstance(nspec, str):  # a string is the plugin's own choice (llm-judge's "openai")
            continue
        child = instantiate(host, nkind, nspec, f"{keypath}.{fname}", errors, workspace=workspace)
        if child is None:
            ok = False
        else:
            plugin.nested[fname] = child
    if ok:
        try:
            plugin.check()
        except (ValueError, DqfError) as exc:
            errors.append(f"{keypath}: {exc}")
            return None
    return plugin if ok else None


def _check_engine(engine: EngineConfig, ids, steps: list[Step]) -> list[str]:
    """``engine.steps`` and ``engine.plugins`` must name steps and plugins of this recipe."""
    names: set[str] = set()

    def walk(p: Plugin):
        names.add(p.name)
        for child in p.nested.values():
            walk(child)

    for s in steps:
        walk(s.plugin)
    errors = [f"engine.steps.{sid}: no step with id {sid!r} ({_known(ids)})" for sid in engine.steps if sid not in ids]
    errors += [f"engine.plugins.{name}: no plugin of this recipe is named {name!r} (plugins: {', '.join(sorted(names))})"
               for name in engine.plugins if name not in names]
    return errors


def _known(ids) -> str:
    return "steps: " + ", ".join(sorted(ids)) if ids else "no steps"


def _deps(s: Step) -> list[str]:
    return [d for d in [s.source, *s.plugin.depends_on()] if d != "input"]


def _toposort(steps: list[Step]) -> tuple[list[Step], list[str] | None]:
    """Steps in an order where each comes after the steps it reads (file order otherwise), or the first cycle.

    Iterative depth-first search: a chain of thousands of steps needs no recursion and no copied paths.
    """
    by_id = {s.id: s for s in steps}
    done: set[str] = set()
    order: list[Step] = []
    for root in sorted(steps, key=lambda s: s.index):
        if root.id in done:
            continue
        path: list[str] = [root.id]
        on_path = {root.id: 0}
        stack = [iter(_deps(root))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                sid = path.pop()
                del on_path[sid]
                stack.pop()
                done.add(sid)
                order.append(by_id[sid])
            elif nxt in on_path:
                return [], path[on_path[nxt]:] + [nxt]
            elif nxt not in done:
                on_path[nxt] = len(path)
                path.append(nxt)
                stack.append(iter(_deps(by_id[nxt])))
    return order, None


def _check_columns(recipe: Recipe) -> list[str]:
    errors = []
    producers: dict[str, str] = {}
    for s in recipe.steps_in_file_order:
        for c in s.columns:
            if c in BASE_COLUMNS:
                errors.append(f"{s.key}.{s.kind}: column {c!r} would overwrite a base column")
            elif c in DERIVED_COLUMNS:
                errors.append(f"{s.key}.{s.kind}: column {c!r} is a name dqf derives for scorers (DERIVED_COLUMNS)")
            elif c in producers:
                errors.append(f"{s.key}.{s.kind}: column {c!r} is also produced by step {producers[c]!r}")
            else:
                producers[c] = s.id
    # A column is on a step's path when its producer is an ancestor of the step in the tree of `from` links:
    # entry/exit times of one depth-first walk answer that in O(1), so checking is linear in the recipe's size.
    tin, tout = _euler_times(recipe.steps)
    by_id = {s.id: s for s in recipe.steps}

    def upstream(c: str, s: Step) -> bool:
        p = producers.get(c)
        return p is not None and p != s.id and tin[p] < tin[s.id] and tout[s.id] <= tout[p]

    def available(s: Step) -> set[str]:  # only to list in an error message
        return set(BASE_COLUMNS).union(*(set(p.columns) for p in recipe.chain(s.id)[:-1]))

    for s in recipe.steps:
        if s.where is not None:
            own = set(s.columns) if s.kind != "select" else set()
            w = _parse(s)
            if isinstance(w, str):
                errors.append(w)
            else:
                missing = [c for c in sorted(w.columns) if c not in BASE_COLUMNS and c not in own and not upstream(c, s)]
                errors.extend(_check_where(s, w, missing, lambda s=s, own=own: available(s) | own,
                                           lambda c: BASE_COLUMNS.get(c) or by_id[producers[c]].columns.get(c)))
        derived = set(DERIVED_COLUMNS) if s.kind == "score" else set()  # derived: scorers only
        for c in sorted(set(s.plugin.requires())):
            if c not in BASE_COLUMNS and c not in derived and not upstream(c, s):
                errors.append(f"{s.key}.{s.kind}: needs column {c!r}, which no earlier step on its path produces "
                              f"({_avail(available(s))})")
    return errors


def _euler_times(steps: list[Step]) -> tuple[dict[str, int], dict[str, int]]:
    """Entry and exit times of an iterative depth-first walk over the tree of ``from`` links (roots: input)."""
    children: dict[str, list[str]] = {}
    for s in steps:
        children.setdefault(s.source, []).append(s.id)
    tin: dict[str, int] = {}
    tout: dict[str, int] = {}
    clock = 0
    stack = [(root, False) for root in children.get("input", [])[::-1]]
    while stack:
        node, done = stack.pop()
        clock += 1
        if done:
            tout[node] = clock
            continue
        tin[node] = clock
        stack.append((node, True))
        stack.extend((c, False) for c in children.get(node, [])[::-1])
    return tin, tout


def _parse(s: Step):
    try:
        return parse_where(s.where)
    except WhereError as exc:
        return f"{s.key}.where: {exc} (in {s.where!r}); `where` is a condition on each row's columns"


def _check_where(s: Step, w, missing: list[str], visible, dtype_of) -> list[str]:
    """A step's ``where`` (parsed: :mod:`dqf.where`) reads only columns it can see, and is true/false valued.
    ``visible()`` lists those columns (for the message); ``dtype_of(column)`` gives a visible column's type."""
    errors = [f"{s.key}.where: column {c!r} is not produced by this step or an earlier step on its path "
              f"({_avail(visible())})" for c in missing]
    if errors or w.boolean:
        return errors
    dtype = str(dtype_of(w.bare_column) or "") if w.bare_column else ""
    if w.bare_column and dtype.lower() in ("boolean", "bool"):
        return []
    what = f"column {w.bare_column!r} is {dtype}" if w.bare_column else f"{s.where!r} is a value"
    return [f"{s.key}.where: {what}, not true/false; write a condition such as "
            f"{(w.bare_column or 'value')} > 0"]


def _avail(cols: set[str]) -> str:
    return "available: " + ", ".join(sorted(cols))


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
