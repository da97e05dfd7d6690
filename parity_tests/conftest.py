"""Shared helpers: the torch reference and ulp distances.

torch runs on the device that matches JAX's backend where torch has it (CUDA for a GPU) and on
CPU otherwise (TPU included).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch

torch.manual_seed(0)

TORCH_DEVICE = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"

TORCH_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


def to_torch(x, dtype_name=None, requires_grad=False):
    """A numpy/JAX array as a torch tensor on TORCH_DEVICE (bfloat16 via float32, exact)."""
    arr = np.asarray(x)
    name = dtype_name or str(arr.dtype)
    if name == "bfloat16":
        t = torch.from_numpy(arr.astype(np.float32)).to(torch.bfloat16)
    else:
        t = torch.from_numpy(arr.copy())  # copy(): contiguous, keeps 0-d
    t = t.to(TORCH_DEVICE)
    if requires_grad:
        t.requires_grad_(True)
    return t


def from_torch(t, dtype_name=None):
    """A torch tensor as a numpy array in its own dtype (bfloat16 through ml_dtypes)."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.float().numpy().astype(ml_dtypes.bfloat16)
    return t.numpy().copy()  # never alias torch storage that an optimizer updates in place


def ulp_distance(a, b) -> int:
    """Max distance in units in the last place between two same-dtype float arrays.

    NaNs must sit at the same positions; +0 and -0 count as equal.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    if a.size == 0:
        return 0
    nan_a, nan_b = np.isnan(a.astype(np.float64)), np.isnan(b.astype(np.float64))
    assert np.array_equal(nan_a, nan_b), "NaN positions differ"
    bits = {2: np.int16, 4: np.int32, 8: np.int64}[a.dtype.itemsize]
    ia = a.view(bits).astype(np.int64)
    ib = b.view(bits).astype(np.int64)
    magnitude = np.int64(np.iinfo(bits).max)
    # Map sign-magnitude bit patterns onto a monotonic integer line.
    ia = np.where(ia < 0, -(ia & magnitude), ia)
    ib = np.where(ib < 0, -(ib & magnitude), ib)
    return int(np.max(np.abs(ia - ib)[~nan_a]) if (~nan_a).any() else 0)


def eps_of(dtype) -> float:
    return float(jnp.finfo(dtype).eps)


@pytest.fixture
def x64():
    """Run a test with jax_enable_x64 on (float64 tables)."""
    with jax.enable_x64(True):
        yield
