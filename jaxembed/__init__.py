"""jaxembed: PyTorch's embedding layer, exactly, in JAX/Flax.

Public API:

* :mod:`jaxembed.functional`: ``embedding``, ``embedding_renorm`` (torch's semantics as pure
  functions).
* :class:`jaxembed.Embed`: ``flax.nnx`` module (``torch.nn.Embedding``).
* :class:`jaxembed.EmbeddingBag`: ``flax.nnx`` module (``torch.nn.EmbeddingBag``).
* :mod:`jaxembed.linen`: ``flax.linen`` modules ``Embed`` and ``EmbeddingBag``.
* :mod:`jaxembed.sharding`: vocab-parallel (row-sharded) lookups on ``jax.sharding`` meshes.
* :mod:`jaxembed.sparse`: row-sparse gradients and torch's sparse optimizers (``sparse=True``).
* :mod:`jaxembed.interop`: tables from torch modules, state dicts and checkpoints (model
  directories, ``.safetensors``, torch files), and back.

:mod:`jaxembed.models` (a BERT encoder built on these tables) is imported on its own.
"""

from jaxembed import functional, interop, linen, sharding, sparse
from jaxembed._src.core.initializers import Pretrained, default_embed_init, flax_embed_init
from jaxembed._src.nnx.embed import Embed, FrozenParam
from jaxembed._src.nnx.embedding_bag import EmbeddingBag

__version__ = "0.1.0"

__all__ = [
    "Embed",
    "EmbeddingBag",
    "FrozenParam",
    "Pretrained",
    "default_embed_init",
    "flax_embed_init",
    "functional",
    "interop",
    "linen",
    "sharding",
    "sparse",
]
