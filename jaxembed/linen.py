"""flax.linen modules with torch's embedding semantics."""

from jaxembed._src.linen.embed import FROZEN_COLLECTION, Embed
from jaxembed._src.linen.embedding_bag import EmbeddingBag
from jaxembed._src.linen.sparse import (
    IDS_COLLECTION,
    PROBE_COLLECTION,
    SPARSE_COLLECTION,
    row_gradients,
    row_probes,
)

__all__ = [
    "Embed",
    "EmbeddingBag",
    "FROZEN_COLLECTION",
    "IDS_COLLECTION",
    "PROBE_COLLECTION",
    "SPARSE_COLLECTION",
    "row_gradients",
    "row_probes",
]
