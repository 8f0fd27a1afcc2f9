"""The plugin registry: the table of plugin kinds, the plugin manager built from entry points and local modules,
and lookup by name."""

from __future__ import annotations

import difflib
import hashlib
import importlib.metadata
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pluggy
from pydantic import BaseModel

from dqf import hookspecs
from dqf.errors import PluginError
from dqf.plugin import Backend, Embedder, Plugin, Probe, Scorer, Selector

ENTRY_POINT_GROUP = "dqf"


@dataclass(frozen=True)
class Kind:
    """A kind of plugin: its name, the base class its plugins derive from, the hook that registers them, and the
    key a recipe step uses for it (``None``: it is only ever nested in another plugin)."""

    name: str
    base: type[Plugin]
    hook: str
    step_key: str | None


#: Every kind of plugin, in the order ``dqf plugins`` lists them.
KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("scorer", Scorer, "dqf_register_scorers", "score"),
    Kind("selector", Selector, "dqf_register_selectors", "select"),
    Kind("probe", Probe, "dqf_register_probes", "probe"),
    Kind("embedder", Embedder, "dqf_register_embedders", None),
    Kind("backend", Backend, "dqf_register_backends", None),
)}


def step_kind(step_key: str) -> Kind:
    """The kind a recipe step's key (``score``, ``select``, ``probe``) names."""
    return next(k for k in KINDS.values() if k.step_key == step_key)


@dataclass(frozen=True)
class Provider:
    """Where a plugin comes from: an installed distribution or a local file."""

    distribution: str
    version: str
    module: str

    def __str__(self) -> str:
        if self.distribution.startswith("local file"):
            return self.distribution
        return f"{self.distribution} {self.version} ({self.module})"


@dataclass(frozen=True)
class PluginInfo:
    name: str
    kind: str
    cls: type[Plugin]
    provider: Provider

    def options_schema(self) -> dict[str, Any]:
        return self.cls.Options.model_json_schema()


class PluginHost:
    """A plugin manager and the registry of plugins it yielded. Build one per command; never global."""

    def __init__(self, pm: pluggy.PluginManager, providers: dict[str, Provider]):
        self.pm = pm
        self._providers = providers
        self._plugins: dict[str, PluginInfo] = {}
        self._collect()

    # -- registry -----------------------------------------------------------------
    def _collect(self) -> None:
        self._plugins.clear()
        for kind in KINDS.values():
            hook = getattr(self.pm.hook, kind.hook)
            # Call each implementation on its own so every class is attributed to its provider.
            for impl in hook.get_hookimpls():
                provider = self._providers.get(impl.plugin_name) or Provider(
                    impl.plugin_name, "", getattr(impl.plugin, "__name__", "?")
                )
                impl.function(register=lambda cls, _k=kind.name, _p=provider: self._add(_k, cls, _p))

    def _add(self, kind: str, cls: Any, provider: Provider) -> None:
        base = KINDS[kind].base
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(f"{provider}: registered {cls!r} as a {kind}, but it is not a dqf.{base.__name__} subclass")
        if not cls.name:
            raise PluginError(f"{provider}: {cls.__name__} has no `name`")
        opts = getattr(cls, "Options", None)
        if not (isinstance(opts, type) and issubclass(opts, BaseModel)) or opts.model_config.get("extra") != "forbid":
            raise PluginError(
                f"{provider}: {cls.__name__}.Options must be a pydantic model with extra='forbid' (subclass dqf.PluginOptions)"
            )
        existing = self._plugins.get(cls.name)
        if existing is not None and existing.cls is not cls:
            raise PluginError(
                f"two plugins are named {cls.name!r}: {existing.kind} {existing.cls.__name__} from {existing.provider} "
                f"and {kind} {cls.__name__} from {provider}; uninstall one or rename it"
            )
        self._plugins[cls.name] = PluginInfo(cls.name, kind, cls, provider)

    def all(self) -> list[PluginInfo]:
        return sorted(self._plugins.values(), key=lambda p: (p.kind, p.name))

    def names(self, kind: str | None = None) -> list[str]:
        return sorted(p.name for p in self._plugins.values() if kind is None or p.kind == kind)

    def get(self, kind: str, name: str) -> PluginInfo:
        info = self._plugins.get(name)
        if info is not None and info.kind == kind:
            return info
        raise PluginError(self.unknown_message(kind, name))

    def unknown_message(self, kind: str, name: str) -> str:
        available = self.names(kind)
        info = self._plugins.get(name)
        if info is not None:
            return f"{name!r} is a {info.kind}, not a {kind}; available {kind}s: {', '.join(available) or 'none'}"
        close = difflib.get_close_matches(name, available, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {kind} {name!r}{hint}; available {kind}s: {', '.join(available) or 'none installed'}"

    # -- lifecycle hooks ------------------------------------------------------------
    @property
    def hook(self):
        return self.pm.hook


def _entry_point_plugins() -> Iterable[tuple[str, Any, Provider]]:
    """Load the ``dqf`` entry points, refusing two distributions that claim one name.

    pluggy's own loader silently skips a second entry point with a name it has seen,
    which would hide a conflict between two installed packages, so we load them here.
    """
    by_name: dict[str, list[importlib.metadata.EntryPoint]] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        by_name.setdefault(ep.name, []).append(ep)
    for name, eps in sorted(by_name.items()):
        dists = {}
        for ep in eps:
            dist = ep.dist.name if ep.dist else "?"
            dists.setdefault((dist, ep.value), ep)
        if len(dists) > 1:
            who = " and ".join(f"{d} ({v})" for d, v in dists)
            raise PluginError(f"two installed distributions provide the dqf entry point {name!r}: {who}; uninstall one")
        ep = next(iter(dists.values()))
        try:
            module = ep.load()
        except Exception as exc:  # a broken third-party plugin must say who it is
            dist = ep.dist.name if ep.dist else "?"
            raise PluginError(f"plugin {name!r} from {dist} failed to import ({ep.value}): {exc}") from exc
        yield name, module, Provider(ep.dist.name if ep.dist else "?", ep.dist.version if ep.dist else "", ep.value)


def load_local_module(path: Path) -> Any:
    """Import a ``.py`` file given in a recipe's ``plugins`` list. This runs the file's code."""
    path = Path(path).resolve()
    if not path.is_file():
        raise PluginError(f"local plugin module not found: {path}")
    mod_name = "dqf_local_" + hashlib.blake2b(str(path).encode(), digest_size=6).hexdigest()
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    if path.suffix != ".py":
        raise PluginError(f"local plugin module {path} is not a Python file (.py)")
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # a module calling sys.exit() must not end dqf silently
        del sys.modules[mod_name]
        what = f"called sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else f"{type(exc).__name__}: {exc}"
        raise PluginError(f"local plugin module {path} failed to import: {what}") from exc
    return module


def build_plugin_manager(
    local_modules: Iterable[str | Path] = (),
    *,
    entry_points: bool = True,
    extra_plugins: Iterable[tuple[str, Any]] = (),
) -> PluginHost:
    """Create a fresh plugin manager with every installed plugin, plus ``local_modules`` (file paths).

    ``extra_plugins`` are ``(name, module_or_object)`` pairs registered directly, for tests
    and embedding.
    """
    pm = pluggy.PluginManager("dqf")
    pm.add_hookspecs(hookspecs)
    providers: dict[str, Provider] = {}
    if entry_points:
        for name, module, provider in _entry_point_plugins():
            pm.register(module, name=name)
            providers[name] = provider
    for name, obj in extra_plugins:
        pm.register(obj, name=name)
        providers[name] = Provider(name, "", getattr(obj, "__name__", type(obj).__name__))
    for path in local_modules:
        module = load_local_module(Path(path))
        pname = f"local:{Path(path).resolve()}"
        if pm.get_plugin(pname) is None:
            pm.register(module, name=pname)
        providers[pname] = Provider(f"local file {path}", "", module.__name__)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {exc.plugin!r} has a hook implementation that matches no dqf hook: {exc}") from exc
    return PluginHost(pm, providers)


def describe_plugins(host: PluginHost) -> list[dict[str, Any]]:
    """What ``dqf plugins --json`` prints: one dict per plugin."""
    return [
        {
            "name": p.name,
            "kind": p.kind,
            "class": p.cls.__name__,
            "version": p.cls.version,
            "distribution": p.provider.distribution,
            "distribution_version": p.provider.version,
            "module": p.cls.__module__,
            "summary": (p.cls.__doc__ or "").strip().splitlines()[0] if p.cls.__doc__ else "",
            "options_schema": p.options_schema(),
        }
        for p in host.all()
    ]
