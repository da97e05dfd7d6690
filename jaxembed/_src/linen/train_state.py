"""``jaxembed.linen.TrainState``: flax's ``TrainState`` with frozen tables and max_norm.

flax's ``flax.training.train_state.TrainState`` carries ``params`` only. A Linen model with
jaxembed tables also has the ``"frozen"`` collection (``from_pretrained(freeze=True)``), and
torch's ``max_norm`` renorms the stored table inside the forward, so the optimizer must update
the renormed table (torch's optimizer steps the weight its forward renormed in place). This
subclass carries the other collections and takes the variables that the forward wrote back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flax import struct
from flax.training import train_state

from jaxembed._src.linen import sparse as sparse_linen

_SPARSE_COLLECTIONS = (
    sparse_linen.SPARSE_COLLECTION,
    sparse_linen.PROBE_COLLECTION,
    sparse_linen.IDS_COLLECTION,
)


class TrainState(train_state.TrainState):
    """flax's ``TrainState`` plus the variables outside ``"params"`` and max_norm's write-back.

    A training step, as short as the NNX one (``nnx.Optimizer`` sees the renormed table by
    itself)::

        state = jaxembed.linen.TrainState.create(
            apply_fn=model.apply, variables=model.init(key, ids), tx=optax.adam(1e-3))

        @jax.jit
        def train_step(state, ids, target):
            def loss_fn(params):
                out, mutated = state.apply(params, ids)   # max_norm renorms, as torch
                return jnp.mean((out - target) ** 2), mutated
            (loss, mutated), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
            return state.apply_gradients(grads=grads, mutated=mutated), loss

    ``collections``: every collection of ``model.init``'s variables except ``"params"`` (e.g.
    ``"frozen"``, ``"batch_stats"``). They are passed to every :meth:`apply`, made mutable there,
    and never differentiated, so no optax transformation (weight decay included) changes a
    frozen table; only max_norm's renorm does, as in torch. Tables with ``sparse=True`` are
    trained by ``jaxembed.sparse``'s optimizers instead (docs/guides/sparse.md);
    :meth:`create` refuses them.
    """

    collections: Mapping[str, Any] = struct.field(default_factory=dict)

    @classmethod
    def create(cls, *, apply_fn, tx, variables=None, params=None, **kwargs) -> TrainState:
        """A state at step 0. Pass ``variables`` (``model.init``'s whole dict: ``"params"``
        is trained, the rest goes to ``collections``) or, as flax's ``TrainState``, ``params``.
        """
        if (variables is None) == (params is None):
            raise TypeError(
                "TrainState.create takes exactly one of `variables` (the dict "
                "model.init returns) or `params`"
            )
        if variables is not None:
            collections = {k: v for k, v in variables.items() if k != "params"}
            sparse = sorted(set(collections) & set(_SPARSE_COLLECTIONS))
            if sparse:
                raise ValueError(
                    f"variables hold the sparse=True collections {sparse}: train those tables "
                    "with jaxembed.sparse's optimizers (docs/guides/sparse.md), not optax "
                    "through TrainState, which would never update them"
                )
            kwargs["collections"] = collections
            params = variables.get("params", {})
        return super().create(apply_fn=apply_fn, params=params, tx=tx, **kwargs)

    @property
    def variables(self) -> dict:
        """``{"params": params, **collections}``, for ``model.apply`` (evaluation)."""
        return {"params": self.params, **self.collections}

    @property
    def mutable(self) -> list[str]:
        """The collections a training forward may write: ``"params"`` and ``collections``."""
        return ["params", *self.collections]

    def apply(self, params, *args, **kwargs):
        """``apply_fn({"params": params, **collections}, *args, mutable=self.mutable, **kwargs)``:
        returns ``(output, mutated)``; hand ``mutated`` to :meth:`apply_gradients`."""
        kwargs.setdefault("mutable", self.mutable)
        return self.apply_fn({"params": params, **self.collections}, *args, **kwargs)

    def apply_gradients(self, *, grads, mutated=None, **kwargs) -> TrainState:
        """flax's ``apply_gradients``, applied to the variables the forward wrote back.

        ``mutated``: the second output of :meth:`apply` (or of ``apply_fn(..., mutable=...)``).
        Its ``"params"`` replace ``params`` before the optimizer step (torch's optimizer steps
        the weight its forward renormed in place) and its other collections replace
        ``collections`` (a frozen table's renorm). Without it, this is flax's method.
        """
        if mutated is not None:
            self = self.replace(
                params=mutated.get("params", self.params),
                collections={k: mutated.get(k, v) for k, v in self.collections.items()},
            )
        return super().apply_gradients(grads=grads, **kwargs)
