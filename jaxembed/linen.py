"""flax.linen modules with torch's embedding semantics."""

from jaxembed._src.linen_embed import FROZEN_COLLECTION, Embed

__all__ = ["Embed", "FROZEN_COLLECTION"]
