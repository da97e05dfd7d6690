"""Vocab-parallel (row-sharded) tables on ``jax.sharding`` meshes, with torch's rules.

The modules use this path by themselves when their table's rows are sharded (``jaxembed.Embed(...,
embedding_metadata={"out_sharding": ("model", None)})``, or ``nn.with_partitioning`` on a
``jaxembed.linen.Embed``'s ``embedding_init``); these are the functions underneath.
"""

from jaxembed._src.core.sharding import (
    VocabParallel,
    vocab_parallel_embed_and_renorm,
    vocab_parallel_embedding,
    vocab_parallel_embedding_renorm,
)

__all__ = [
    "VocabParallel",
    "vocab_parallel_embed_and_renorm",
    "vocab_parallel_embedding",
    "vocab_parallel_embedding_renorm",
]
