"""``compare``: a torch model and its JAX port, tensor by tensor, stage by stage, judged against
float64; and the pytest helpers built on it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flax import nnx

from jaxembed._src.testing import run as R
from jaxembed._src.testing.compare import Criterion, judge
from jaxembed._src.testing.optimizers import OptimizerPair
from jaxembed._src.testing.param_map import ParamMap, build_param_map, copy_weights, is_linen
from jaxembed._src.testing.report import Report, Row

REFERENCES = ("float64", "none")


def _pair(value, name: str):
    if value is None:
        return None, None
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return value
    raise TypeError(f"{name} must be a (torch_fn, jax_fn) pair, got {value!r}")


def _batch(inputs):
    """The model's arguments: a dict (keywords) or a tuple (positional) of numpy arrays."""
    if isinstance(inputs, Mapping):
        return {k: np.asarray(v) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return tuple(np.asarray(v) for v in inputs)
    return (np.asarray(inputs),)


def _arrays(tree):
    """Any tree of arrays (mappings, sequences) as numpy, its structure kept."""
    if tree is None:
        return None
    if isinstance(tree, Mapping):
        return {k: _arrays(v) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return tuple(_arrays(v) for v in tree)
    return np.asarray(tree)


def compare(
    torch_model,
    jax_model,
    inputs,
    *,
    targets=None,
    loss: tuple[Callable, Callable] | None = None,
    call: tuple[Callable, Callable] | None = None,
    optimizer: OptimizerPair | None = None,
    steps: int = 0,
    gradients: bool = True,
    overrides: Mapping[str, Any] | None = None,
    param_map: ParamMap | None = None,
    load_weights: bool = True,
    criterion: Criterion = Criterion(),
    reference: str = "float64",
    jax_float64: bool = True,
    jit: bool = True,
    seed: int = 0,
    title: str | None = None,
) -> Report:
    """Runs ``torch_model`` and its JAX port on the same batch and judges every tensor.

    Stages, in order (the report names the first that fails):

    * ``weights`` (only with ``load_weights=False``): the JAX model's own weights against
      torch's, through the parameter map: checks the port's checkpoint loading.
    * ``forward``: the output of every mapped module, in the order torch's modules return, then
      the model's outputs and the loss.
    * ``gradients``: the gradient of every trainable mapped parameter.
    * ``step 1`` .. ``step K``: every mapped parameter after each optimizer step (the bound
      includes the pair's documented ``step_allowance``, k times after step k).

    Each tensor is judged by ``criterion`` (:class:`Criterion`) against torch's float64 run
    from the same float32 numbers (``reference="float64"``), or by the fallback bound on
    ``max|jax - torch|`` where no float64 result exists (``reference="none"``, a torch model
    that fails or stays float32 under ``.double()``); the report says which, per tensor.

    Args:
      torch_model: a ``torch.nn.Module``; never modified (a deep copy runs).
      jax_model: a ``flax.nnx.Module`` (never modified: a clone runs) or a ``(linen_module,
        variables)`` pair.
      inputs: the batch: an array, a tuple of positional arrays or a dict of keyword arrays
        (numpy or JAX). Integer arrays reach torch as int64 and JAX as int32 (int64 under
        x64); floating ones as given, and as float64 in the float64 runs.
      targets: an array or a tree (tuple, dict) of arrays for the loss, converted like
        ``inputs`` and passed to ``loss`` with the same structure.
      loss: ``(torch_loss, jax_loss)``, each ``loss(outputs, targets) -> scalar``. Default:
        ``sum(output * cotangent)`` over every float output, with a fixed random cotangent
        (``seed``), so gradients are the same vector-Jacobian product in both frameworks.
      call: ``(torch_call, jax_call)``, each ``call(model, *inputs) -> outputs`` (``**inputs``
        for a dict). Default: ``model(*inputs)``. For Linen, ``model`` is a function that
        applies the module with its variables.
      optimizer: an :class:`OptimizerPair` (``sgd``, ``adam``, ``adamw``...) for ``steps``.
      steps: optimizer steps to compare (each on the same batch).
      gradients: False compares the forward only.
      overrides, param_map: the parameter map (see :func:`param_map`): hand entries, or a
        prepared map. Unmapped or mismatched tensors raise ValueError naming them.
      load_weights: copy torch's weights into (a clone of) the JAX model first. False compares
        the JAX model's own weights (stage ``weights``) and runs from them.
      criterion: ``k``, ``floor_ulps``, ``fallback_eps``.
      reference: ``"float64"`` or ``"none"`` (skip the float64 runs; the fallback bound).
      jax_float64: also run the JAX model in float64: its own float32 rounding enters the
        criterion (see :class:`Criterion`; XLA:CPU's float32 matmuls round more than torch's),
        and the report's ``f64 gap`` column shows the two models' distance without float32
        rounding. False judges by ``k * torch err`` alone.
      jit: run the JAX forward, gradient and training step under ``jit`` (as a training loop
        does); False runs them op by op.
      seed: the cotangents' seed.
      title: the report's first line.

    Both models run in eval mode (dropout off). Linen models with ``sparse=True`` tables are
    not supported (use the NNX module).
    """
    import torch  # noqa: F401 (fail here, clearly, when torch is missing)

    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if steps and optimizer is None:
        raise ValueError("steps > 0 needs an optimizer (e.g. jaxembed.testing.adamw(1e-3))")
    if steps and not gradients:
        raise ValueError("steps > 0 needs gradients=True")
    if not isinstance(criterion, Criterion):
        raise TypeError(f"criterion must be a jaxembed.testing.Criterion, got {criterion!r}")
    torch_loss, jax_loss = _pair(loss, "loss")
    torch_call, jax_call = _pair(call, "call")

    pmap = (param_map or build_param_map(torch_model, jax_model, overrides)).check()
    linen = is_linen(jax_model)
    if load_weights:
        if linen:
            jax_model = (jax_model[0], copy_weights(torch_model, jax_model, pmap))
        else:
            jax_model = copy_weights(torch_model, nnx.clone(jax_model), pmap)
    spec = R.Spec(
        _batch(inputs),
        _arrays(targets),
        torch_call,
        jax_call,
        torch_loss,
        jax_loss,
        optimizer,
        steps,
        gradients,
        jit,
        seed,
        pmap,
        weights=not load_weights,
    )
    run_jax = R.run_linen if linen else R.run_nnx
    timings, notes = {}, []

    t32 = R.run_torch(torch_model, spec, "float32")
    timings["torch float32"] = t32.seconds
    t64 = None
    if reference == "float64":
        try:
            t64 = R.run_torch(torch_model, spec, R.FLOAT64)
            timings["torch float64"] = t64.seconds
        except Exception as e:  # noqa: BLE001 (a model that cannot run in float64)
            notes.append(
                f"torch's float64 run failed ({type(e).__name__}: {e}); every tensor "
                "is judged by the fallback bound"
            )
    j32 = run_jax(jax_model, spec, "float32")
    timings["jax float32"] = j32.seconds
    j64 = None
    if jax_float64 and reference == "float64":
        try:
            j64 = run_jax(jax_model, spec, R.FLOAT64)
            timings["jax float64"] = j64.seconds
        except Exception as e:  # noqa: BLE001 (diagnostic only)
            notes.append(f"the JAX float64 run failed ({type(e).__name__}: {e}); no f64 gap")

    rows: list[Row] = []
    fallback: list[str] = []
    jax32_in_64: list[str] = []

    def add(
        stage, name, jax_name, got, want, ref, jax_ref, allowance=0.0, undetermined=None, reason=""
    ):
        if ref is not None and np.asarray(ref).dtype != np.float64:
            fallback.append(name)
            ref = None
        if jax_ref is not None and np.asarray(jax_ref).dtype != np.float64:
            jax32_in_64.append(name)
            jax_ref = None
        rows.append(
            Row(
                stage,
                name,
                jax_name,
                tuple(np.shape(want)),
                str(np.asarray(got).dtype),
                judge(
                    got,
                    want,
                    ref,
                    criterion,
                    jax_reference=jax_ref,
                    allowance=allowance,
                    element_allowance=undetermined,
                    element_reason=reason,
                ),
            )
        )
        return rows[-1]

    def ref_of(run, attr, key):
        return None if run is None else getattr(run, attr).get(key)

    entries = pmap.entries
    if not load_weights:
        for entry in entries:
            w = t32.weights[entry.torch_name]
            add(
                "weights",
                entry.torch_name,
                entry.jax_name,
                j32.weights[entry.torch_name],
                w,
                np.asarray(w, np.float64),
                None,
            )

    # forward: module outputs in torch's order, then the model outputs and the loss
    for name in t32.order:
        if name not in j32.modules:
            continue
        got, want = j32.modules[name], t32.modules[name]
        jax_ref = ref_of(j64, "modules", name)
        if got.shape != want.shape:
            if _squeezed(got.shape) != _squeezed(want.shape):
                notes.append(
                    f"{name}: output not compared, shapes differ (torch {want.shape}, "
                    f"JAX {got.shape})"
                )
                continue
            # e.g. torch's position table looked up with (1, L) ids, JAX's with (L,)
            got = got.reshape(want.shape)
            jax_ref = None if jax_ref is None else jax_ref.reshape(want.shape)
        add(
            "forward",
            name,
            pmap.modules[name.split("#")[0]],
            got,
            want,
            ref_of(t64, "modules", name),
            jax_ref,
        )
    for t_name, j_name in _pair_outputs(t32.outputs, j32.outputs):
        add(
            "forward",
            t_name,
            j_name,
            j32.outputs[j_name],
            t32.outputs[t_name],
            ref_of(t64, "outputs", t_name),
            ref_of(j64, "outputs", j_name),
        )
    sensitivity: dict[str, np.ndarray] = {}
    if gradients:
        add(
            "forward",
            "loss",
            "loss",
            j32.loss,
            t32.loss,
            None if t64 is None else t64.loss,
            None if j64 is None else j64.loss,
        )
        for entry in entries:
            if entry.trainable:
                row = add(
                    "gradients",
                    entry.torch_name,
                    entry.jax_name,
                    j32.grads[entry.torch_name],
                    t32.grads[entry.torch_name],
                    ref_of(t64, "grads", entry.torch_name),
                    ref_of(j64, "grads", entry.torch_name),
                )
                if steps and spec.step_optimizer.sign_lr:
                    # An adaptive step (m / sqrt(v)) is scale-free in the gradient: a gradient
                    # error d moves it by about d / |g|, up to a reversed step for a gradient
                    # within rounding of zero (d: this stage's bound).
                    g = np.abs((t64 or t32).grads[entry.torch_name])
                    bound = row.verdict.bound
                    sensitivity[entry.torch_name] = np.where(
                        g > bound, bound / np.where(g > bound, g, 1.0), 1.0
                    )
    for k in range(steps):
        pair = spec.step_optimizer
        sign_lr = pair.sign_lr or 0.0  # set whenever `sensitivity` has entries
        for entry in entries:
            add(
                f"step {k + 1}",
                entry.torch_name,
                entry.jax_name,
                j32.steps[k][entry.torch_name],
                t32.steps[k][entry.torch_name],
                None if t64 is None else t64.steps[k][entry.torch_name],
                None if j64 is None else j64.steps[k][entry.torch_name],
                (k + 1) * pair.step_allowance,
                None
                if entry.torch_name not in sensitivity
                else sensitivity[entry.torch_name] * (2.0 * (k + 1) * sign_lr),
                "adaptive steps of gradients near rounding level",
            )

    if fallback and t64 is not None:
        notes.append(
            f"torch's float64 run left {len(fallback)} tensor(s) in float32 (a "
            f"hard-coded dtype); judged by the fallback bound: {', '.join(fallback[:5])}"
            + (" ..." if len(fallback) > 5 else "")
        )
    if jax32_in_64:
        notes.append(
            f"the JAX float64 run left {len(jax32_in_64)} tensor(s) in float32 (a "
            "hard-coded dtype); judged without JAX's own rounding: "
            f"{', '.join(jax32_in_64[:5])}" + (" ..." if len(jax32_in_64) > 5 else "")
        )
    if t64 is None:
        ref_text = (
            "none: fallback bound max|jax-torch| <= "
            f"{criterion.fallback_eps + criterion.floor_ulps:g} eps x max|torch|"
        )
    else:
        ref_text = "torch float64 run" + (" (and JAX's, for its own rounding)" if j64 else "")
    what = (
        ["forward"]
        + (["gradients"] if gradients else [])
        + ([f"{steps} x {spec.step_optimizer.label}"] if steps else [])
    )
    title = title or (
        f"{type(torch_model).__name__} (torch) vs "
        f"{type(jax_model[0] if linen else jax_model).__name__} "
        f"({'Linen' if linen else 'NNX'}): {', '.join(what)}"
    )
    return Report(title, rows, criterion, ref_text, pmap.summary(), timings, notes)


def _squeezed(shape) -> tuple:
    return tuple(n for n in shape if n != 1)


def _pair_outputs(torch_outputs: dict, jax_outputs: dict) -> list[tuple[str, str]]:
    """torch output name -> JAX output name: by name, else by position when the counts agree."""
    if set(torch_outputs) == set(jax_outputs):
        return [(k, k) for k in torch_outputs]
    common = [k for k in torch_outputs if k in jax_outputs]
    if len(torch_outputs) == len(jax_outputs) and not common:
        return list(zip(torch_outputs, jax_outputs))
    raise ValueError(
        f"the models' outputs do not correspond: torch gives {list(torch_outputs)}, JAX gives "
        f"{list(jax_outputs)}; pass call=(torch_call, jax_call) selecting the same outputs"
    )


def assert_forward_close(torch_model, jax_model, inputs, **kwargs) -> Report:
    """:func:`compare` of the forward only (every module's output and the outputs); raises
    AssertionError with the report's table when a tensor fails. Returns the report."""
    return compare(torch_model, jax_model, inputs, gradients=False, **kwargs).assert_passed()


def assert_gradients_close(torch_model, jax_model, inputs, **kwargs) -> Report:
    """:func:`compare` of the forward and every parameter's gradient; raises AssertionError
    with the table when a tensor fails. Returns the report."""
    return compare(torch_model, jax_model, inputs, **kwargs).assert_passed()


def assert_training_close(
    torch_model, jax_model, inputs, optimizer: OptimizerPair, steps: int = 5, **kwargs
) -> Report:
    """:func:`compare` of the forward, the gradients and ``steps`` optimizer steps; raises
    AssertionError with the table when a tensor fails. Returns the report."""
    return compare(
        torch_model, jax_model, inputs, optimizer=optimizer, steps=steps, **kwargs
    ).assert_passed()
