"""torch.nn.functional's embedding operators in JAX (the semantics live in ``jaxembed._src``)."""

from jaxembed._src.core.embedding_bag import embedding_bag, embedding_bag_and_renorm
from jaxembed._src.core.functional import (
    attend,
    embed_and_renorm,
    embedding,
    embedding_renorm,
    renorm_scale,
)

__all__ = [
    "attend",
    "embed_and_renorm",
    "embedding",
    "embedding_bag",
    "embedding_bag_and_renorm",
    "embedding_renorm",
    "renorm_scale",
]
