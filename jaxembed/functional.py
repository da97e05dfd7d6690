"""torch.nn.functional's embedding operators in JAX (the semantics live in ``jaxembed._src``)."""

from jaxembed._src.functional import (
    attend,
    embed_and_renorm,
    embedding,
    embedding_renorm,
    renorm_scale,
)

__all__ = ["attend", "embed_and_renorm", "embedding", "embedding_renorm", "renorm_scale"]
