"""flax.linen modules with torch's embedding semantics, and a ``TrainState`` that carries their
frozen tables and max_norm's write-back."""

from jaxembed._src.linen.embed import FROZEN_COLLECTION, Embed
from jaxembed._src.linen.embedding_bag import EmbeddingBag
from jaxembed._src.linen.sparse import (
    IDS_COLLECTION,
    PROBE_COLLECTION,
    SPARSE_COLLECTION,
    row_gradients,
    row_probes,
)
from jaxembed._src.linen.train_state import TrainState

__all__ = [
    "Embed",
    "EmbeddingBag",
    "FROZEN_COLLECTION",
    "IDS_COLLECTION",
    "PROBE_COLLECTION",
    "SPARSE_COLLECTION",
    "TrainState",
    "row_gradients",
    "row_probes",
]
