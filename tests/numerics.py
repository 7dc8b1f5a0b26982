"""The suite's one rule for comparing float tensors that two computations should agree on.

Two float32 computations of the same quantity differ by rounding, and the rounding depends on the order of each sum:
the layout (a shared-prompt row or DPO's two rows), the number of threads, and the CPU's vector units (AVX2, AVX-512,
AMX) all change it. The error of a sum is a few units in the last place of its *largest terms*, not of its result. A
gradient entry near zero, where large contributions cancel, carries the absolute error of those contributions, so an
elementwise `rtol` with a tiny `atol` fails on such entries on some CPUs while proving nothing more.

The rule: every entry must satisfy |actual - expected| <= rtol * scale, where `scale` is the largest |entry| of the
expected tensor, or a larger scale that the caller passes when the expected tensor is itself a sum of parts that may
cancel (the largest terms are then those of the parts). A wrong term, a missing factor or a dropped pair moves entries
by a sizeable share of the tensor's scale, orders of magnitude above the `rtol` used here.

Set `TRL_SSO_TOLERANCE_LOG` to a file to append, for every comparison, the share of its tolerance that it used: that
is how the suite's headroom on a given CPU and thread count is measured.
"""

import os

import torch


def assert_close_to_scale(actual, expected, rtol: float, scale: float | None = None, name: str = "") -> None:
    """Assert that `actual` equals `expected` to `rtol` times the scale of `expected` (see the module docstring).

    >>> assert_close_to_scale(torch.tensor([1.0, 2e-7]), torch.tensor([1.0, 0.0]), rtol=1e-6)
    >>> assert_close_to_scale(torch.tensor([1.0, 2e-5]), torch.tensor([1.0, 0.0]), rtol=1e-6)
    Traceback (most recent call last):
    ...
    AssertionError: largest difference 2e-05 at index (1,), above 1e-06 x the tensor's scale 1 = 1e-06
    """
    actual, expected = torch.as_tensor(actual).detach(), torch.as_tensor(expected).detach()
    prefix = f"{name}: " if name else ""
    assert actual.shape == expected.shape, f"{prefix}shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual, expected = actual.double(), expected.double()
    assert bool(torch.isfinite(actual).all()), f"{prefix}not finite"
    if scale is None:
        scale = expected.abs().max().item() if expected.numel() else 0.0
    error = (actual - expected).abs()
    worst = error.max().item() if error.numel() else 0.0
    tolerance = rtol * scale
    log = os.environ.get("TRL_SSO_TOLERANCE_LOG")
    if log:
        with open(log, "a") as f:
            used = worst / tolerance if tolerance else (float("inf") if worst else 0.0)
            f.write(f"{os.environ.get('PYTEST_CURRENT_TEST', '?').split(' ')[0]}\t{name}\t{used:.3g}\n")
    if worst > tolerance:
        index = tuple(int(i) for i in torch.unravel_index(error.argmax(), error.shape))
        raise AssertionError(
            f"{prefix}largest difference {worst:.3g} at index {index}, above {rtol:g} x the tensor's scale "
            f"{scale:.3g} = {tolerance:.3g}"
        )
