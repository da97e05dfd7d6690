"""flax.linen modules with torch's embedding semantics."""

from jaxembed._src.linen_embed import FROZEN_COLLECTION, Embed
from jaxembed._src.linen_embedding_bag import EmbeddingBag

__all__ = ["Embed", "EmbeddingBag", "FROZEN_COLLECTION"]
