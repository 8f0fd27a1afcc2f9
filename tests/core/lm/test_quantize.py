"""dqf.lm.quantize_int8: int8 Linear layers close to float32, rows independent of their batch, skip honoured."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from dqf.lm import quantize as q  # noqa: E402
from dqf.lm import quantize_int8  # noqa: E402


def mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 32),
                               torch.nn.Sequential(torch.nn.Linear(32, 1))).eval()


def test_close_to_float32_and_every_linear_swapped():
    ref = mlp()
    x = torch.randn(40, 7, 64)
    with torch.inference_mode():
        want = ref(x)
        model = quantize_int8(mlp())
        got = model(x)
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    rel = (got - want).norm() / want.norm()
    assert 1e-6 < rel < 0.03  # really quantized, and still close


def test_a_row_does_not_depend_on_the_rest_of_its_batch():
    """Per-token activation scales: an outlier row in the batch must not change another row's result
    (torch's dynamic quantization shares one scale per call, so there it would)."""
    model = quantize_int8(mlp(1))
    x = torch.randn(8, 64)
    loud = x.clone()
    loud[0] *= 1000
    with torch.inference_mode():
        alone = model(x[1:2])
        in_quiet_batch = model(x)[1:2]
        in_loud_batch = model(loud)[1:2]
    assert torch.equal(alone, in_quiet_batch)
    assert torch.equal(alone, in_loud_batch)


def test_skip_keeps_named_layers_float32():
    model = quantize_int8(mlp(2), skip=("3.",))
    kinds = {name: type(m).__name__ for name, m in model.named_modules() if "Linear" in type(m).__name__}
    assert kinds == {"0": "Int8Linear", "2": "Int8Linear", "3.0": "Linear"}


def test_int32_fallback_equals_the_int8_kernel():
    a = torch.randint(-127, 128, (33, 40), dtype=torch.int8)
    b = torch.randint(-127, 128, (40, 9), dtype=torch.int8)
    assert torch.equal(q._int_mm(torch, a, b), a.to(torch.int32) @ b.to(torch.int32))
