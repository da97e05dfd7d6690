"""Loading identical tables from and back to torch (``torch.nn.Embedding``, state_dicts,
``.safetensors`` files, numpy/JAX arrays). torch is imported only inside the functions."""

from jaxembed._src.interop import (
    load_safetensors,
    save_safetensors,
    table_of,
    to_linen,
    to_nnx,
    to_torch,
    torch_options,
)

__all__ = [
    "load_safetensors",
    "save_safetensors",
    "table_of",
    "to_linen",
    "to_nnx",
    "to_torch",
    "torch_options",
]
