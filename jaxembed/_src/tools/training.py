"""The same training run in torch and in jaxembed, for the parity suite and report.

A run: start from one table, then for each step look up ``ids[s]``, take the loss
``sum((rows - targets[s]) ** 2)`` and apply one optimizer step (``torch.optim`` on the torch side,
the matching optax transformation under ``jax.jit`` on the JAX side). max_norm renorms are
persisted as torch does: the step updates the renormed table.

torch is imported only inside the torch runner.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import nnx

from jaxembed._src import interop
from jaxembed._src.core import functional as F
from jaxembed._src.linen import embed as linen_embed
from jaxembed._src.linen import train_state as linen_train_state
from jaxembed._src.nnx.embed import Embed


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer's hyper-parameters, buildable as ``torch.optim`` or as optax.

    ``kind``: ``"sgd"`` (with ``momentum``, ``nesterov``), ``"adam"`` or ``"adamw"``.
    ``weight_decay`` follows torch: added to the gradient (L2) for SGD and Adam, decoupled for
    AdamW.
    """

    kind: str
    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    @property
    def label(self) -> str:
        parts = [self.kind]
        if self.momentum:
            parts.append(f"momentum={self.momentum}")
        if self.nesterov:
            parts.append("nesterov")
        if self.weight_decay:
            parts.append(f"wd={self.weight_decay}")
        return ",".join(parts)

    def pair(self):
        """The same optimizer as a ``jaxembed.testing`` pair (torch.optim and optax)."""
        from jaxembed._src.testing import optimizers

        if self.kind == "sgd":
            return optimizers.sgd(self.lr, self.momentum, self.nesterov, self.weight_decay)
        if self.kind not in ("adam", "adamw"):
            raise ValueError(f"kind must be 'sgd', 'adam' or 'adamw', got {self.kind!r}")
        build = optimizers.adam if self.kind == "adam" else optimizers.adamw
        return build(self.lr, self.betas, self.eps, self.weight_decay)

    def torch(self, params):
        return self.pair().torch(params)

    def optax(self) -> optax.GradientTransformation:
        return self.pair().optax


def _loss(rows, targets):
    return jnp.sum((rows - targets) ** 2)


def torch_train(
    table, ids, targets, spec: OptimizerSpec, *, freeze=False, device="cpu", **options
) -> np.ndarray:
    """The torch run: ``nn.Embedding.from_pretrained`` and ``spec``'s ``torch.optim``.

    A frozen table is multiplied by a trainable vector ``other`` (ones at the start), so that
    the optimizer steps, weight decay included, as around a frozen embedding in a larger model.
    """
    import torch

    emb = torch.nn.Embedding.from_pretrained(
        interop.numpy_to_torch(table, device), freeze=freeze, **options
    )
    other = torch.nn.Parameter(torch.ones(table.shape[1], dtype=emb.weight.dtype, device=device))
    opt = spec.torch([other] if freeze else [emb.weight])
    for s in range(len(ids)):
        opt.zero_grad()
        rows = emb(torch.from_numpy(np.asarray(ids[s], np.int64)).to(device))
        if freeze:
            rows = rows * other
        tgt = interop.numpy_to_torch(targets[s], device)
        ((rows - tgt) ** 2).sum().backward()
        opt.step()
    return interop.torch_to_numpy(emb.weight)


def jax_train(
    table, ids, targets, spec: OptimizerSpec, *, api="functional", freeze=False, **options
) -> np.ndarray:
    """The JAX run with ``api`` in ``"functional"``, ``"nnx"``, ``"linen"``; each step jitted.

    Mirrors :func:`torch_train`, including the extra trainable parameter ``other``.
    """
    runner = {"functional": _train_functional, "nnx": _train_nnx, "linen": _train_linen}[api]
    table = jnp.asarray(table)
    other = jnp.ones((table.shape[1],), table.dtype)
    ids = [jnp.asarray(i, jnp.int32) for i in ids]
    targets = [jnp.asarray(t) for t in targets]
    return np.asarray(runner(table, other, ids, targets, spec.optax(), freeze, options))


def _train_functional(table, other, ids, targets, tx, freeze, options):
    params = {"other": other} if freeze else {"table": table}

    @jax.jit
    def step(params, frozen_table, opt_state, ids, tgt):
        def loss(params):
            weight = frozen_table if freeze else params["table"]
            rows, renormed = F.embed_and_renorm(ids, weight, **options)
            return _loss(rows * params["other"] if freeze else rows, tgt), renormed

        grads, renormed = jax.grad(loss, has_aux=True)(params)
        if freeze:
            frozen_table = renormed
        else:
            params = {**params, "table": renormed}  # torch's in-place renorm, then the step
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), frozen_table, opt_state

    opt_state = tx.init(params)
    for i, t in zip(ids, targets):
        params, table, opt_state = step(params, table, opt_state, i, t)
    return table if freeze else params["table"]


class _NnxModel(nnx.Module):
    def __init__(self, table, other, freeze, options):
        self.embed = Embed.from_pretrained(table, freeze=freeze, **options)
        self.other = nnx.Param(other) if freeze else None

    def __call__(self, ids):
        rows = self.embed(ids)
        return rows if self.other is None else rows * self.other.get_value()


def _train_nnx(table, other, ids, targets, tx, freeze, options):
    model = _NnxModel(table, other, freeze, options)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, ids, tgt):
        grads = nnx.grad(lambda m: _loss(m(ids), tgt))(model)
        optimizer.update(model, grads)

    for i, t in zip(ids, targets):
        step(model, optimizer, i, t)
    return model.embed.embedding.get_value()


class _LinenModel(nn.Module):
    table: Any
    other: Any
    freeze: bool
    options: Any

    @nn.compact
    def __call__(self, ids):
        embed = linen_embed.Embed.from_pretrained(
            self.table, freeze=self.freeze, name="embed", **dict(self.options)
        )
        rows = embed(ids)
        return rows * self.param("other", lambda key: self.other) if self.freeze else rows


def _train_linen(table, other, ids, targets, tx, freeze, options):
    model = _LinenModel(table, other, freeze, tuple(options.items()))
    state = linen_train_state.TrainState.create(
        apply_fn=model.apply, variables=model.init(jax.random.key(0), ids[0]), tx=tx
    )

    @jax.jit
    def step(state, ids, tgt):
        def loss(params):
            rows, mutated = state.apply(params, ids)  # max_norm's renorm comes back in mutated
            return _loss(rows, tgt), mutated

        grads, mutated = jax.grad(loss, has_aux=True)(state.params)
        return state.apply_gradients(grads=grads, mutated=mutated)

    for i, t in zip(ids, targets):
        state = step(state, i, t)
    collection = linen_embed.FROZEN_COLLECTION if freeze else "params"
    return state.variables[collection]["embed"]["embedding"]
