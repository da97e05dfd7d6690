"""Optimizer pairs: a ``torch.optim`` optimizer and the optax transformation (and jaxembed sparse
optimizer) that computes the same step.

=====================================================  ===========================================
torch                                                   JAX
=====================================================  ===========================================
``SGD(lr, momentum, nesterov, weight_decay)``           ``optax.sgd`` (after
                                                        ``optax.add_decayed_weights``: torch's L2);
                                                        sparse tables ``jaxembed.sparse.sgd``
``Adam(lr, betas, eps, weight_decay)``                  ``optax.adam`` (after
                                                        ``add_decayed_weights``)
``AdamW(lr, betas, eps, weight_decay)``                 ``optax.adamw`` (decoupled decay)
``SparseAdam(lr, betas, eps)``                          ``jaxembed.sparse.sparse_adam``
``Adagrad(lr, lr_decay, weight_decay, ...)``            ``jaxembed.sparse.adagrad``
=====================================================  ===========================================

torch is imported only when a torch optimizer is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import optax

from jaxembed._src import tolerances
from jaxembed._src.core import sparse_optim


@dataclasses.dataclass(frozen=True)
class OptimizerPair:
    """The same optimizer in both frameworks.

    Attributes:
      label: for the report.
      torch: ``params -> torch.optim.Optimizer`` for the dense parameters.
      optax: the ``optax.GradientTransformation`` for the JAX model's ``nnx.Param`` leaves
        (Linen: the ``"params"`` collection). None when the pair is for sparse tables only.
      sparse: a ``jaxembed.sparse`` optimizer for the JAX model's sparse tables
        (``jaxembed.Embed(sparse=True)``), or None.
      torch_sparse: ``params -> torch.optim.Optimizer`` for torch's ``sparse=True`` tables;
        None uses ``torch`` (``SGD`` and ``Adagrad`` take sparse gradients).
      sign_lr: for adaptive optimizers (Adam, AdamW, SparseAdam, Adagrad), the learning rate;
        None otherwise (SGD). Their step ``lr * m / sqrt(v)`` does not shrink with the gradient:
        a gradient error ``d`` moves it by about ``lr * d / |g|``, and a gradient within
        rounding of zero steps by ``lr`` in a direction rounding decides, in either framework.
        The comparison allows each element ``2 * k * sign_lr * min(1, d / |g|)`` after step
        ``k`` (``g``: its reference gradient, ``d``: the gradient stage's bound) and counts the
        elements that needed it.
      step_allowance: how far, per element, one step of the two implementations may differ
        from an identical state for a documented reason other than rounding; the comparison
        adds ``k * step_allowance`` to the bound of every parameter after step ``k``. Adam and
        AdamW: optax computes the bias corrections ``1 - b**t`` in float32 (torch in double),
        measured <= 1.2e-5 * lr per step (``jaxembed/_src/tolerances.py``, ADAM_STEP_REL).

    Build one with :func:`sgd`, :func:`adam`, :func:`adamw`, :func:`sparse_adam` or
    :func:`adagrad`; for anything else construct it directly (you then vouch that the two sides
    compute the same step).
    """

    label: str
    torch: Callable[[list], Any] | None
    optax: optax.GradientTransformation | None
    sparse: sparse_optim.SparseGradientTransformation | None = None
    torch_sparse: Callable[[list], Any] | None = None
    sign_lr: float | None = None
    step_allowance: float = 0.0

    def with_sparse(self, other: OptimizerPair) -> OptimizerPair:
        """This pair for the dense parameters, ``other`` (e.g. :func:`sparse_adam`) for the
        sparse tables."""
        if other.sparse is None:
            raise ValueError(f"{other.label} has no sparse optimizer")
        return dataclasses.replace(
            self,
            label=f"{self.label} + {other.label}",
            sparse=other.sparse,
            torch_sparse=other.torch_sparse or other.torch,
            sign_lr=max(self.sign_lr or 0.0, other.sign_lr or 0.0) or None,
            step_allowance=max(self.step_allowance, other.step_allowance),
        )

    def torch_optimizers(self, dense: list, sparse: list) -> list:
        """The torch optimizers over the dense and the sparse parameters (empty lists skipped)."""
        out = []
        if dense:
            if self.torch is None:
                raise ValueError(f"{self.label} has no optimizer for dense parameters")
            out.append(self.torch(dense))
        if sparse:
            build = self.torch_sparse or self.torch
            if build is None or self.sparse is None:
                raise ValueError(
                    f"{self.label} has no optimizer for sparse tables (torch sparse=True, "
                    "jaxembed sparse=True); add one with .with_sparse(sparse_adam(...)) or "
                    "adagrad(...)"
                )
            out.append(build(sparse))
        return out


def _label(name: str, **hyper) -> str:
    parts = [
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in hyper.items()
        if v not in (0, 0.0, False, None)
    ]
    return f"{name}({', '.join(parts)})"


def _adam_allowance(lr: float) -> float:
    # optax's float32 bias correction (tolerances.ADAM_STEP_REL, measured on one step from an
    # identical state); the backend's figure.
    import jax

    return tolerances.ADAM_STEP_REL[tolerances.backend_key(jax.default_backend())] * lr


def sgd(
    lr: float,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    *,
    dampening: float = 0.0,
) -> OptimizerPair:
    """``torch.optim.SGD`` and ``optax.sgd`` (torch's ``weight_decay`` is L2 added to the
    gradient: ``optax.add_decayed_weights`` first). Sparse tables: ``jaxembed.sparse.sgd``,
    which torch's ``SGD`` also runs on sparse gradients (without weight decay)."""
    if dampening:
        raise ValueError("optax.sgd has no dampening; dampening must be 0")

    def build_torch(params):
        import torch

        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            dampening=dampening,
        )

    tx = optax.sgd(lr, momentum=momentum or None, nesterov=nesterov)
    if weight_decay:
        tx = optax.chain(optax.add_decayed_weights(weight_decay), tx)
    sparse = None if weight_decay else sparse_optim.sgd(lr, momentum, dampening, 0.0, nesterov)
    return OptimizerPair(
        _label("SGD", lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay),
        build_torch,
        tx,
        sparse,
    )


def adam(
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> OptimizerPair:
    """``torch.optim.Adam`` and ``optax.adam`` (torch's ``weight_decay`` is L2 added to the
    gradient: ``optax.add_decayed_weights`` first). Sparse tables need a sparse optimizer:
    ``adam(...).with_sparse(sparse_adam(...))``.

    Known difference: optax computes the bias corrections ``1 - b**t`` in float32, torch in
    double (relative 1.3e-5 of the step at t = 1 for b2 = 0.999).
    """

    def build_torch(params):
        import torch

        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    tx = optax.adam(lr, *betas, eps=eps)
    if weight_decay:
        tx = optax.chain(optax.add_decayed_weights(weight_decay), tx)
    return OptimizerPair(
        _label("Adam", lr=lr, weight_decay=weight_decay),
        build_torch,
        tx,
        sign_lr=lr,
        step_allowance=_adam_allowance(lr),
    )


def adamw(
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
) -> OptimizerPair:
    """``torch.optim.AdamW`` and ``optax.adamw`` (decoupled weight decay, torch's default 0.01;
    optax's default 1e-4 is not used)."""

    def build_torch(params):
        import torch

        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    return OptimizerPair(
        _label("AdamW", lr=lr, weight_decay=weight_decay),
        build_torch,
        optax.adamw(lr, *betas, eps=eps, weight_decay=weight_decay),
        sign_lr=lr,
        step_allowance=_adam_allowance(lr),
    )


def sparse_adam(
    lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
) -> OptimizerPair:
    """``torch.optim.SparseAdam`` and ``jaxembed.sparse.sparse_adam``, for sparse tables only
    (combine with a dense pair: ``adam(...).with_sparse(sparse_adam(...))``)."""

    def build_torch(params):
        import torch

        return torch.optim.SparseAdam(params, lr=lr, betas=betas, eps=eps)

    return OptimizerPair(
        _label("SparseAdam", lr=lr),
        None,
        None,
        sparse_optim.sparse_adam(lr, betas, eps),
        build_torch,
        sign_lr=lr,
    )


def adagrad(
    lr: float,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
) -> OptimizerPair:
    """``torch.optim.Adagrad`` and ``jaxembed.sparse.adagrad``, for sparse tables only (optax's
    dense ``adagrad`` is a different formula: its accumulator starts at 0.1)."""

    def build_torch(params):
        import torch

        return torch.optim.Adagrad(
            params,
            lr=lr,
            lr_decay=lr_decay,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
            eps=eps,
        )

    return OptimizerPair(
        _label("Adagrad", lr=lr),
        None,
        None,
        sparse_optim.adagrad(lr, lr_decay, weight_decay, initial_accumulator_value, eps),
        build_torch,
        sign_lr=lr,
    )
