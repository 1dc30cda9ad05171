"""`torch.autograd.gradcheck` (float64, finite differences) for every custom autograd.Function in
the package. The list is checked against the source: a new Function without a gradcheck here fails."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from escnet.models.vlf import _GeluLinear

PACKAGE = Path(__file__).resolve().parents[2] / "escnet"
CHECKED = {"escnet/models/vlf.py:_GeluLinear"}


def test_every_custom_autograd_function_is_gradchecked():
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        for name in re.findall(r"^class\s+(\w+)\(\s*(?:torch\.)?(?:autograd\.)?(?:function\.)?Function\s*\)", path.read_text(), re.M):
            found.add(f"{path.relative_to(PACKAGE.parent).as_posix()}:{name}")
    assert found == CHECKED, f"custom autograd Functions {sorted(found)}; gradchecked here: {sorted(CHECKED)}"


def test_gelu_linear_gradcheck():
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64, requires_grad=True)  # (..., m) leading dims
    weight = torch.randn(4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_GeluLinear.apply, (h, weight, bias), eps=1e-6, atol=1e-8, rtol=1e-6)
    # values near 0, where gelu's curvature is largest
    h0 = (0.01 * torch.randn(7, 5, generator=gen, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(_GeluLinear.apply, (h0, weight, bias), eps=1e-6, atol=1e-8, rtol=1e-6)
