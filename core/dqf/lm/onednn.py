"""CPU inference fast path: a model's Linear layers run as oneDNN matrix multiplies on weights packed once."""

from __future__ import annotations

import os
from typing import Any, Iterable

__all__ = ["onednn_linears", "onednn_available"]

#: Set to "0" to keep torch's default CPU matrix multiply (MKL) everywhere dqf would swap.
ENV_SWITCH = "DQF_ONEDNN"


def onednn_available() -> bool:
    """True when this torch build can run packed oneDNN linears (x86/arm CPU builds with mkldnn)."""
    import torch

    return (os.environ.get(ENV_SWITCH, "1") != "0" and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise") and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def onednn_linears(model: Any, *, skip: Iterable[str] = (), pack: bool | None = None) -> int:
    """Swap the CPU float32/bfloat16 ``torch.nn.Linear`` layers of ``model`` (in place) for oneDNN ones.

    torch runs a float32 ``nn.Linear`` on the CPU through MKL's sgemm, which on the 2-core AMD
    EPYC this was measured on does not reach its AVX-512 speed; oneDNN's linear (what
    ``torch.compile`` uses on CPU) was 1.2-2.7x faster per layer on the same weights, and
    1.25-3.6x with the weight packed once into oneDNN's blocked layout (``bench/onednn.py``):
    packing matters most for the few-row products of generation. Results stay float32 (or
    bfloat16): only the summation order differs, so outputs agree with ``nn.Linear`` to rounding
    (about 1e-6 relative).

    The swapped layers are inference only. Each keeps its ``weight`` and ``bias`` (so code that
    reads them, or a weight tied to the embeddings, still works). A layer called with autograd
    recording gradients for its weight falls back to ``nn.Linear``, as does a packed layer whose
    weight was moved or cast after the swap. Nothing is swapped when oneDNN is unavailable, the
    model is not on the CPU, or the environment sets ``DQF_ONEDNN=0``.

    Args:
        model: a torch module.
        skip: layers whose qualified name contains any of these strings are left alone.
        pack: keep a packed copy of each weight (one more copy of the Linear weights in memory).
            ``None``: pack when those copies take at most a quarter of the memory available now.

    Returns:
        How many layers were swapped.
    """
    import torch

    if not onednn_available():
        return 0
    skip = tuple(skip)
    chosen = []
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            # Exact type: subclasses (LoRA, quantized layers) have forwards of their own.
            if (type(child) is torch.nn.Linear and child.weight.device.type == "cpu"
                    and child.weight.dtype in (torch.float32, torch.bfloat16) and not any(s in full for s in skip)):
                chosen.append((parent, name, child))
    if pack is None:
        extra = sum(child.weight.numel() * child.weight.element_size() for _, _, child in chosen)
        free = available_memory()
        pack = extra <= (free // 4 if free is not None else 1 << 30)
    cls = _onednn_linear_class(torch)
    for parent, name, child in chosen:
        setattr(parent, name, cls(child, pack))
    return len(chosen)


def available_memory() -> int | None:
    """Bytes of memory available to new allocations now (Linux ``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


_CLASS = None


def _onednn_linear_class(torch):
    global _CLASS
    if _CLASS is not None:
        return _CLASS

    class OneDnnLinear(torch.nn.Module):
        """``nn.Linear`` for inference, computed by ``torch.ops.mkldnn._linear_pointwise`` on a packed weight."""

        def __init__(self, lin, pack: bool = True):
            super().__init__()
            self.in_features, self.out_features = lin.in_features, lin.out_features
            self.weight, self.bias = lin.weight, lin.bias
            self._packed = None  # not a buffer: it has no dense storage to save, move or compare
            if pack:
                with torch.no_grad():
                    self._packed = torch.ops.mkldnn._reorder_linear_weight(lin.weight.detach(), None)
            self._packed_from = lin.weight.data_ptr()
            self._dtype = lin.weight.dtype

        def forward(self, x):
            w = self.weight
            if (x.dtype != w.dtype or w.dtype != self._dtype or w.device.type != "cpu" or not w.is_contiguous()
                    or (torch.is_grad_enabled() and w.requires_grad)):
                return torch.nn.functional.linear(x, w, self.bias)
            # A weight moved or cast since packing (``model.to(...)``) has new storage: the packed copy is stale.
            if self._packed is not None and w.data_ptr() == self._packed_from:
                return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")
            return torch.ops.mkldnn._linear_pointwise(x, w, self.bias, "none", [], "")

        def extra_repr(self):
            return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                    f"packed={self._packed is not None}")

    _CLASS = OneDnnLinear
    return _CLASS
