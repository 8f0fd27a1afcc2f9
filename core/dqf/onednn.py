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


def onednn_linears(model: Any, *, skip: Iterable[str] = ()) -> int:
    """Swap the CPU float32/bfloat16 ``torch.nn.Linear`` layers of ``model`` (in place) for oneDNN ones.

    torch runs a float32 ``nn.Linear`` on the CPU through MKL's sgemm, which packs the weight
    again on every call and, on AMD CPUs, does not use the AVX-512 kernels; oneDNN with a
    weight packed once for the CPU's blocked layout (what ``torch.compile`` does on CPU) was
    1.5-3x faster per layer on the 2-core AMD EPYC this was measured on (``bench/onednn.py``).
    Results stay float32 (or bfloat16): only the summation order differs, so outputs agree with
    ``nn.Linear`` to rounding (about 1e-6 relative).

    The swapped layers are inference only. Each keeps its ``weight`` and ``bias`` (so code that
    reads them, or a weight tied to the embeddings, still works) plus the packed copy, which
    costs one more copy of the Linear weights in memory. A layer called with autograd recording
    gradients for its weight falls back to ``nn.Linear``; weights changed after the swap are not
    seen, so swap after training. Nothing is swapped when oneDNN is unavailable, the model is
    not on the CPU, or the environment sets ``DQF_ONEDNN=0``.

    Args:
        model: a torch module.
        skip: layers whose qualified name contains any of these strings are left alone.

    Returns:
        How many layers were swapped.
    """
    import torch

    if not onednn_available():
        return 0
    skip = tuple(skip)
    swapped = 0
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            # Exact type: subclasses (LoRA, quantized layers) have forwards of their own.
            if (type(child) is torch.nn.Linear and child.weight.device.type == "cpu"
                    and child.weight.dtype in (torch.float32, torch.bfloat16) and not any(s in full for s in skip)):
                setattr(parent, name, _onednn_linear_class(torch)(child))
                swapped += 1
    return swapped


_CLASS = None


def _onednn_linear_class(torch):
    global _CLASS
    if _CLASS is not None:
        return _CLASS

    class OneDnnLinear(torch.nn.Module):
        """``nn.Linear`` for inference, computed by ``torch.ops.mkldnn._linear_pointwise`` on a packed weight."""

        def __init__(self, lin):
            super().__init__()
            self.in_features, self.out_features = lin.in_features, lin.out_features
            self.weight, self.bias = lin.weight, lin.bias
            # The packed copy is not a buffer: it has no dense storage to save, move or compare.
            with torch.no_grad():
                self._packed = torch.ops.mkldnn._reorder_linear_weight(lin.weight.detach(), None)
            self._packed_from = lin.weight.data_ptr()

        def forward(self, x):
            # A weight moved or cast since packing (``model.to(...)``) has new storage: the packed copy is stale.
            if (self.weight.data_ptr() != self._packed_from or x.dtype != self.weight.dtype
                    or (torch.is_grad_enabled() and self.weight.requires_grad)):
                return torch.nn.functional.linear(x, self.weight, self.bias)
            return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")

        def extra_repr(self):
            return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    _CLASS = OneDnnLinear
    return _CLASS
