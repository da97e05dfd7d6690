"""Moving embedding tables between torch and jaxembed, bit for bit.

Sources a table can come from: a ``torch.nn.Embedding``, a ``torch.Tensor`` (a state_dict entry),
a mapping such as a state_dict (with ``key``), a numpy or JAX array, or a ``.safetensors`` file
(with ``key``). Every conversion copies the bits: bfloat16 travels as its 16-bit pattern, never
through float32.

torch and safetensors are optional: they are imported only inside the functions that need them.
The modules are built with their own ``from_pretrained`` (so the padding row is kept as given, as
torch's ``from_pretrained`` does); no rule is restated here.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jaxembed._src.core.arrays import is_torch as _is_torch
from jaxembed._src.core.arrays import torch_to_numpy  # noqa: F401 (re-exported: tools use it)
from jaxembed._src.linen import embed as linen_embed
from jaxembed._src.nnx.embed import Embed, FrozenParam

# The options torch's nn.Embedding and jaxembed's modules share (torch's names).
OPTION_NAMES = ("padding_idx", "max_norm", "norm_type", "scale_grad_by_freq", "freeze")


def numpy_to_torch(array, device=None):
    """A numpy/JAX array as a torch tensor with the same bits (bfloat16 included)."""
    import torch

    a = np.ascontiguousarray(np.asarray(array))
    if a.dtype == ml_dtypes.bfloat16:
        t = torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    else:
        t = torch.from_numpy(a.copy())
    return t if device is None else t.to(device)


def load_safetensors(path, key: str = "weight") -> np.ndarray:
    """The tensor ``key`` of a ``.safetensors`` file, as a numpy array (only that tensor is read)."""
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="numpy") as f:
        keys = list(f.keys())
        if key not in keys:
            raise KeyError(f"key {key!r} not in {os.fspath(path)!r}; it holds {keys}")
        return f.get_tensor(key)


def save_safetensors(path, table, key: str = "weight") -> None:
    """Writes ``table`` (an array, a jaxembed module or a ``torch.nn.Embedding``) under ``key``."""
    from safetensors.numpy import save_file

    save_file({key: np.ascontiguousarray(table_of(table))}, os.fspath(path))


def table_of(source, key: str | None = None, variables=None) -> np.ndarray:
    """The embedding table held by ``source``, as a numpy array with unchanged bits.

    ``source``: a ``torch.nn.Embedding``, a ``torch.Tensor``, a mapping (a state_dict or the
    tensors of a checkpoint: ``key`` names the entry, default ``"weight"``), a path to a
    ``.safetensors`` file (``key`` as for a mapping), a numpy or JAX array, ``jaxembed.Embed``,
    or ``jaxembed.linen.Embed`` together with its ``variables``.
    """
    if _is_torch(source, "Embedding"):
        return torch_to_numpy(source.weight)
    if _is_torch(source, "Tensor"):
        return torch_to_numpy(source)
    if isinstance(source, (str, os.PathLike)):
        return load_safetensors(source, key or "weight")
    if isinstance(source, Embed):
        return np.asarray(source.embedding.get_value())
    if isinstance(source, linen_embed.Embed):
        if variables is None:
            raise TypeError("a jaxembed.linen.Embed holds no table: pass its `variables` too")
        return np.asarray(_linen_table(source, variables))
    if isinstance(source, Mapping):
        key = key or "weight"
        if key not in source:
            raise KeyError(f"key {key!r} not in the mapping; it holds {list(source)}")
        return table_of(source[key])
    if isinstance(source, (np.ndarray, jax.Array)):
        return np.asarray(source)
    raise TypeError(
        "expected a torch.nn.Embedding, a torch.Tensor, a state_dict (with key), a .safetensors "
        f"path, a numpy/JAX array or a jaxembed Embed; got {type(source).__name__}"
    )


def torch_options(embedding) -> dict[str, Any]:
    """The options of a ``torch.nn.Embedding`` under jaxembed's names (``freeze`` is
    ``not weight.requires_grad``). torch's ``sparse`` (a gradient layout) has no counterpart:
    jaxembed's gradients are dense and equal to ``sparse=True``'s after coalescing."""
    return {
        "padding_idx": embedding.padding_idx,
        "max_norm": embedding.max_norm,
        "norm_type": embedding.norm_type,
        "scale_grad_by_freq": embedding.scale_grad_by_freq,
        "freeze": not embedding.weight.requires_grad,
    }


def _resolve(source, key, options, dtype):
    unknown = set(options) - set(OPTION_NAMES)
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}; allowed: {list(OPTION_NAMES)}")
    merged = torch_options(source) if _is_torch(source, "Embedding") else {}
    merged.update(options)
    table = table_of(source, key)
    if dtype is not None:
        table = table.astype(dtype)  # an explicit, requested conversion
    elif table.dtype == np.float64 and not jax.config.jax_enable_x64:
        # jnp.asarray would silently narrow it to float32.
        raise ValueError(
            "the table is float64 but jax_enable_x64 is off; enable it "
            "(jax.config.update('jax_enable_x64', True)) or pass dtype=jnp.float32"
        )
    return jnp.asarray(table), merged


def to_nnx(source, *, key: str | None = None, dtype=None, **options) -> Embed:
    """A ``jaxembed.Embed`` holding the table of ``source`` (see :func:`table_of`).

    Options (``padding_idx``, ``max_norm``, ``norm_type``, ``scale_grad_by_freq``, ``freeze``)
    default to a torch module's own; otherwise to ``from_pretrained``'s (``freeze=True`` as
    torch). Keywords given here override them. ``dtype`` converts the table explicitly (a float64
    table needs ``jax_enable_x64`` otherwise).
    """
    table, opts = _resolve(source, key, options, dtype)
    return Embed.from_pretrained(table, **opts)


def to_linen(source, *, key: str | None = None, dtype=None, **options):
    """``(module, variables)``: a ``jaxembed.linen.Embed`` and the variables holding the table of
    ``source``, with options as in :func:`to_nnx`."""
    table, opts = _resolve(source, key, options, dtype)
    module = linen_embed.Embed.from_pretrained(table, **opts)
    variables = module.init(jax.random.key(0), jnp.zeros((0,), jnp.int32))
    return module, variables


def _linen_table(module, variables):
    collection = variables.get(module._collection, variables)  # the whole dict or one collection
    return collection["embedding"]


def to_torch(module, variables=None, *, device=None):
    """A ``torch.nn.Embedding`` with the table and options of a jaxembed module.

    ``module``: ``jaxembed.Embed``, or ``jaxembed.linen.Embed`` with its ``variables``. The
    output-dtype cast (``dtype``) has no torch counterpart and is not carried over.
    """
    import torch

    if isinstance(module, Embed):
        table = module.embedding.get_value()
        freeze = isinstance(module.embedding, FrozenParam)
        padding_idx = module.padding_idx
    elif isinstance(module, linen_embed.Embed):
        if variables is None:
            raise TypeError("a jaxembed.linen.Embed holds no table: pass its `variables` too")
        table = _linen_table(module, variables)
        freeze = module.freeze
        padding_idx = module._padding_idx
    else:
        raise TypeError(f"expected a jaxembed Embed module, got {type(module).__name__}")
    return torch.nn.Embedding.from_pretrained(
        numpy_to_torch(table, device),
        freeze=freeze,
        padding_idx=padding_idx,
        max_norm=module.max_norm,
        norm_type=module.norm_type,
        scale_grad_by_freq=module.scale_grad_by_freq,
    )
