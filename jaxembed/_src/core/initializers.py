"""Table initialisation: torch's N(0, 1) default, pretrained tables, and the padding row."""

from __future__ import annotations

import dataclasses
import inspect

import jax
import jax.numpy as jnp
from flax.nnx import VariableMetadata

from jaxembed._src.core import validation

# torch's nn.Embedding.reset_parameters: init.normal_(weight), i.e. N(0, 1).
default_embed_init = jax.nn.initializers.normal(stddev=1.0)

#: flax's ``Embed`` default (``flax.nnx.nn.linear.default_embed_init``): a truncated normal of
#: std ``1/sqrt(features)``. ``embedding_init=jaxembed.flax_embed_init`` gives flax's table, bit
#: for bit from the same key.
flax_embed_init = jax.nn.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)


class Pretrained:
    """An initializer that returns a given table, as ``from_pretrained`` does.

    torch's ``from_pretrained`` does not zero the padding row of a pretrained table, and neither
    do the modules when their ``embedding_init`` is a ``Pretrained``.
    """

    def __init__(self, embeddings):
        # A torch tensor is read bit for bit; a 64-bit array that x64 would narrow is refused.
        embeddings = validation.table(embeddings, "embeddings")
        validation.check_pretrained(embeddings)
        # A copy: on CPU jnp.asarray can alias a numpy buffer that the caller may mutate later.
        self.embeddings = jnp.array(embeddings, copy=True)

    def __call__(self, key, shape, dtype=None):
        del key
        if tuple(shape) != tuple(self.embeddings.shape):
            raise AssertionError("Shape of weight does not match num_embeddings and embedding_dim")
        return self.embeddings if dtype is None else self.embeddings.astype(dtype)

    def __repr__(self):
        return f"Pretrained(shape={self.embeddings.shape}, dtype={self.embeddings.dtype})"


def is_pretrained(embedding_init) -> bool:
    """Whether ``embedding_init`` returns a given table (a :class:`Pretrained`, possibly wrapped:
    ``inspect.unwrap`` sees through ``nn.with_partitioning`` and ``nnx.with_partitioning``)."""
    return isinstance(inspect.unwrap(embedding_init), Pretrained)


def init_table(key, num_embeddings, features, param_dtype, embedding_init, padding_idx):
    """The initial table: ``embedding_init``'s draw with the padding row zeroed (torch's
    ``reset_parameters``), except for a pretrained table, which is kept as given."""
    validation.check_sizes(num_embeddings, features)
    table = embedding_init(key, (num_embeddings, features), param_dtype)
    if padding_idx is not None and not is_pretrained(embedding_init):

        def zero_row(t):
            return t.at[padding_idx].set(0)

        if isinstance(table, VariableMetadata):  # nnx.with_partitioning / nnx.with_metadata
            table = dataclasses.replace(table, raw_value=zero_row(table.raw_value))
        else:  # tree.map: reaches the array inside a linen nn.Partitioned box too
            table = jax.tree.map(zero_row, table)
    return table


def pretrained_kwargs(embeddings, freeze: bool) -> dict:
    """The constructor arguments that a module's ``from_pretrained`` derives from ``embeddings``.

    Applies torch's checks (2-D table; no trainable integer table) and ours (a torch tensor is
    read bit for bit, bfloat16 included; a 64-bit array that JAX would narrow is refused), and
    returns ``num_embeddings``, ``features``, ``param_dtype``, ``embedding_init`` (a
    :class:`Pretrained`) and ``freeze``.
    """
    embeddings = validation.table(embeddings, "embeddings")
    validation.check_pretrained(embeddings)
    validation.check_from_pretrained_dtype(embeddings, freeze)
    num_embeddings, features = embeddings.shape
    return dict(
        num_embeddings=num_embeddings,
        features=features,
        param_dtype=embeddings.dtype,
        embedding_init=Pretrained(embeddings),
        freeze=freeze,
    )
