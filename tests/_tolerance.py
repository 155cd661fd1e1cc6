"""Tolerances for comparing a float32 network output with a reference, derived from the computation.

A float32 convolution or matrix product rounds each multiply-add to float32 (unit roundoff
``eps = 2**-24``), and which products are summed in which order depends on the CPU's kernels
(AVX2 vs AVX-512 vs NEON): two correct machines disagree by a few units of roundoff of the
largest value in flight, once per layer. So the bound used here is::

    atol = SAFETY * eps32 * n_layers * max|reference|

with ``n_layers`` the number of Conv/Linear modules the input passes through and the reference
computed in float64 on the machine running the test (its own error is ~1e-16, negligible). On
the 2-core x86 CPU of the project the observed float32-vs-float64 difference of the committed
fixture is 5.4e-5 against a bound of 4.2e-3; a change of meaning (the adapter's effect on that
fixture) is 1.2, ~300x above the bound.
"""

from __future__ import annotations

import torch

EPS32 = float(torch.finfo(torch.float32).eps) / 2  # unit roundoff of float32
SAFETY = 8.0


def n_layers(model: torch.nn.Module) -> int:
    """Multiply-accumulate layers (each adds one rounding step of the largest value in flight)."""
    return sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.ConvTranspose2d)) for m in model.modules())


def float32_atol(model: torch.nn.Module, reference: torch.Tensor) -> float:
    """The absolute tolerance of a float32 forward of ``model`` against a float64 ``reference``."""
    return SAFETY * EPS32 * max(n_layers(model), 1) * float(reference.abs().max())


def float64_reference(model: torch.nn.Module, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
    """``model``'s output computed in float64 on a deep copy (the model itself is left as it was)."""
    import copy

    m64 = copy.deepcopy(model).double()
    with torch.no_grad():
        return m64(*(a.double() for a in args), **{k: v.double() for k, v in kwargs.items()})
