"""Vocab-parallel (row-sharded) tables on ``jax.sharding`` meshes, with torch's rules.

The modules use this path by themselves when their table's rows are sharded (``jaxembed.Embed(...,
embedding_metadata={"out_sharding": ("model", None)})``, or ``nn.with_partitioning`` on a
``jaxembed.linen.Embed``'s ``embedding_init``); these are the functions underneath. The sparse
optimizers of ``jaxembed.sparse`` update a row-sharded table row-sharded by themselves
(:func:`vocab_parallel_sparse_update`).
"""

from jaxembed._src.core.sharding import (
    VocabParallel,
    count_out_of_range,
    vocab_parallel_embed_and_renorm,
    vocab_parallel_embedding,
    vocab_parallel_embedding_bag,
    vocab_parallel_embedding_bag_and_renorm,
    vocab_parallel_embedding_renorm,
    vocab_parallel_sparse_update,
)

__all__ = [
    "VocabParallel",
    "count_out_of_range",
    "vocab_parallel_embed_and_renorm",
    "vocab_parallel_embedding",
    "vocab_parallel_embedding_bag",
    "vocab_parallel_embedding_bag_and_renorm",
    "vocab_parallel_embedding_renorm",
    "vocab_parallel_sparse_update",
]
