"""Arrays from outside JAX: torch tensors, Python lists, numpy arrays, as they are given.

torch is never imported to ask "is it torch?" (the type's module name answers), and a torch
tensor is converted to numpy with the same bits (bfloat16 through ml_dtypes, never through
float32). Nothing here casts: the validation (``validation.py``) checks the original dtype and
values before anything becomes a JAX array.
"""

from __future__ import annotations

import jax
import ml_dtypes
import numpy as np


def is_torch(obj, name: str) -> bool:
    """Whether ``obj`` is a ``torch.<name>`` (a subclass included), without importing torch."""
    return any(c.__module__.startswith("torch") and c.__name__ == name for c in type(obj).__mro__)


def torch_to_numpy(tensor) -> np.ndarray:
    """A torch tensor (any device) as a numpy array with the same bits (bfloat16 via ml_dtypes)."""
    import torch

    t = tensor.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy().copy()


def as_array(x):
    """``x`` as an array with its own dtype and values: JAX arrays and tracers as they are, a torch
    tensor as numpy (same bits), anything else (numpy, lists, scalars) through ``np.asarray``."""
    if isinstance(x, (jax.Array, np.ndarray, jax.core.Tracer)):
        return x
    if is_torch(x, "Tensor"):
        return torch_to_numpy(x)
    return np.asarray(x)
