"""Whole training runs: jitted optax vs torch.optim from identical weights, 10+ steps.

The runners are the library's (``jaxembed._src.tools.training``), shared with ``jaxembed parity``;
this file chooses the matrix (a pairwise cover of optimizer x api x dtype x padding_idx x max_norm
x scale_grad_by_freq) and asserts the tolerances of ``tolerances.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import tolerances as tol
from conftest import TORCH_DEVICE, from_torch, pairwise, to_torch, ulp_distance
from jaxembed._src.tools.parity import NP_DTYPES, Tolerance, within
from jaxembed._src.tools.training import OptimizerSpec as Opt
from jaxembed._src.tools.training import jax_train, torch_train

STEPS = 10
OPTIMIZERS = [
    Opt("sgd", 0.1),
    Opt("sgd", 0.1, momentum=0.9),
    Opt("sgd", 0.1, momentum=0.9, nesterov=True),
    Opt("sgd", 0.1, weight_decay=0.1),
    Opt("sgd", 0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    Opt("adam", 0.01),
    Opt("adam", 0.01, weight_decay=0.1),
    Opt("adamw", 0.01, weight_decay=0.1),
]

MATRIX = [
    row for row in pairwise(
        spec=OPTIMIZERS,
        api=["functional", "nnx", "linen"],
        dtype=["float32", "float64", "bfloat16", "float16"],
        padding_idx=[None, 0, -1],
        max_norm=[None, 1.0],
        scale_grad_by_freq=[False, True],
    )
    # float16 Adam: eps=1e-8 underflows to 0 in float16, both libraries divide by ~0; not a
    # meaningful comparison (use bfloat16 or float32 optimizer state for Adam).
    if not (row["dtype"] == "float16" and row["spec"].kind != "sgd")
]


def _data(dtype, v=20, d=17, steps=STEPS, seed=0):
    rng = np.random.default_rng(seed)
    w = (rng.normal(size=(v, d)) * 1.5).astype(NP_DTYPES[dtype])
    ids = [rng.integers(0, v, size=(6, 7)) for _ in range(steps)]
    ids[3][:] = 0  # one all-padding batch (padding_idx=0), heavy duplicates otherwise
    targets = [rng.normal(size=(6, 7, d)).astype(NP_DTYPES[dtype]) for _ in range(steps)]
    return w, ids, targets


@pytest.mark.parametrize("cfg", MATRIX, ids=lambda c: "-".join(
    str(v.label if isinstance(v, Opt) else v) for v in c.values()))
def test_trajectory_matches_torch(cfg):
    spec, dtype = cfg["spec"], cfg["dtype"]
    options = {k: cfg[k] for k in ("padding_idx", "max_norm", "scale_grad_by_freq")}
    w, ids, targets = _data(dtype)
    with jax.enable_x64(dtype == "float64"):
        want = torch_train(w, ids, targets, spec, device=TORCH_DEVICE, **options)
        got = jax_train(w, ids, targets, spec, api=cfg["api"], **options)
    assert not np.array_equal(want, w)  # it trained
    exact = (tol.ON_CPU and spec.kind == "sgd" and not spec.momentum and not spec.weight_decay
             and dtype in ("float32", "float64") and cfg["max_norm"] is None
             and not cfg["scale_grad_by_freq"])
    if exact:
        # torch's add_(g, alpha=-lr) is one FMA; XLA:CPU emits one under jit: bit-exact.
        assert ulp_distance(got, want) == 0
    else:
        family = "sgd" if spec.kind == "sgd" else "adam"
        assert within(got, want, Tolerance(normwise_eps=tol.TRAJECTORY_EPS[family]))
    if cfg["padding_idx"] is not None and cfg["max_norm"] is None and not spec.weight_decay:
        # The padding row gets no gradient: without weight decay it never moves (torch too).
        pad = cfg["padding_idx"] % w.shape[0]
        np.testing.assert_array_equal(got[pad], w[pad])


@pytest.mark.parametrize("api", ["functional", "nnx", "linen"])
@pytest.mark.parametrize("spec", [
    Opt("sgd", 0.1, weight_decay=0.1),
    Opt("sgd", 0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
    Opt("adam", 0.01, weight_decay=0.1),
    Opt("adamw", 0.01, weight_decay=0.5),
], ids=lambda s: s.label)
def test_frozen_table_is_bit_identical_under_weight_decay(api, spec):
    # freeze=True: optax (weight decay included) never touches the table; torch neither.
    w, ids, targets = _data("float32", seed=1)
    want = torch_train(w, ids, targets, spec, freeze=True, device=TORCH_DEVICE, padding_idx=0)
    got = jax_train(w, ids, targets, spec, api=api, freeze=True, padding_idx=0)
    assert np.array_equal(want.view(np.int32), w.view(np.int32))
    assert np.array_equal(got.view(np.int32), w.view(np.int32))


@pytest.mark.parametrize("api", ["nnx", "linen"])
def test_frozen_table_with_max_norm_changes_only_by_renorm(api):
    # torch renorms even a frozen weight in place (under no_grad); so do the modules.
    w, ids, targets = _data("float32", seed=2)
    spec = Opt("adamw", 0.01, weight_decay=0.1)
    want = torch_train(w, ids, targets, spec, freeze=True, device=TORCH_DEVICE, max_norm=1.0)
    got = jax_train(w, ids, targets, spec, api=api, freeze=True, max_norm=1.0)
    assert not np.array_equal(want, w)
    assert ulp_distance(got, want) <= tol.RENORM_ULP["float32"]


def test_adam_single_step():
    # One step at a time from an identical state isolates the update formula. optax computes the
    # bias corrections 1 - b^t in float32 (1 - float32(0.999) is 1.3e-5 off 0.001 at t=1), torch
    # in Python double; torch's CPU sqrt is MKL's, 1 ulp off IEEE on ~20% of float32 elements
    # (torch-semantics.md section 8). Bound: ADAM_STEP_REL * lr + ADAM_STEP_ULP ulp of the
    # parameter.
    rng = np.random.default_rng(3)
    p = rng.normal(size=(64, 33)).astype(np.float32)
    grads = [rng.normal(size=p.shape).astype(np.float32) for _ in range(4)]
    spec = Opt("adam", 0.01)

    pt = torch.nn.Parameter(to_torch(p))
    opt = spec.torch([pt])
    tx = spec.optax()

    @jax.jit
    def step(p, g, state):
        u, state = tx.update(g, state, p)
        return optax.apply_updates(p, u), state

    pj, state = jnp.asarray(p), tx.init(jnp.asarray(p))
    worst_rel = 0.0
    for g in grads:
        pt.grad = to_torch(g)
        opt.step()
        pj, state = step(pj, jnp.asarray(g), state)
        want = from_torch(pt)
        excess = np.abs(np.asarray(pj, np.float64) - want) - tol.ADAM_STEP_ULP * np.spacing(
            np.abs(want))
        worst_rel = max(worst_rel, float(np.max(excess)) / spec.lr)
        # Resynchronise parameter and moments: measure one step at a time.
        pj = jnp.asarray(want)
        adam_state = state[0]._replace(mu=jnp.asarray(from_torch(opt.state[pt]["exp_avg"])),
                                       nu=jnp.asarray(from_torch(opt.state[pt]["exp_avg_sq"])))
        state = (adam_state,) + tuple(state[1:])
    print(f"Adam single step: max |diff| - {tol.ADAM_STEP_ULP} ulp(p) = {worst_rel:.3g} * lr")
    assert worst_rel <= tol.ADAM_STEP_REL, worst_rel
