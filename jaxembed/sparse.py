"""Row-sparse gradients and sparse optimizers: torch's ``nn.Embedding(sparse=True)``.

The guide docs/guides/sparse.md has complete training steps (NNX, functional, Linen).

* :class:`SparseRows`, :func:`row_gradients`: torch's sparse gradient, with static shapes.
* :func:`sgd`, :func:`sparse_adam`, :func:`adagrad`: torch's optimizers on sparse gradients,
  optax-style (``init`` / ``update`` on pytrees of tables; ``update`` returns the new tables).
* :func:`value_and_grad`, :class:`Optimizer`, :class:`SparseParam`: the ``flax.nnx`` training
  step for ``jaxembed.Embed(sparse=True)`` (Linen helpers are in :mod:`jaxembed.linen`).
* :func:`attach_probe`: the primitive that routes a lookup's row gradient to a probe.
"""

from jaxembed._src.core.sparse import SparseRows, attach_probe, row_gradients
from jaxembed._src.core.sparse_optim import (
    AdagradState,
    SGDState,
    SparseAdamState,
    SparseGradientTransformation,
    adagrad,
    sgd,
    sparse_adam,
)
from jaxembed._src.nnx.sparse import Optimizer, RowIds, RowProbe, SparseParam, value_and_grad

__all__ = [
    "AdagradState",
    "Optimizer",
    "RowIds",
    "RowProbe",
    "SGDState",
    "SparseAdamState",
    "SparseGradientTransformation",
    "SparseParam",
    "SparseRows",
    "adagrad",
    "attach_probe",
    "row_gradients",
    "sgd",
    "sparse_adam",
    "value_and_grad",
]
