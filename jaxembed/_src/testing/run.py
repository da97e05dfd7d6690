"""Running a torch model and its JAX port on the same batch, in one precision: the forward (and
every mapped module's output), the gradient of every mapped parameter, and K optimizer steps.

Both models run in eval mode (dropout off, batch statistics frozen): torch ``model.eval()``,
NNX ``model.eval()``, Linen without an rng for dropout. The models passed in are never changed:
torch runs on a deep copy, NNX on ``nnx.clone``, Linen on its (immutable) variables.

The float64 run is the same run with every floating parameter, input, target and cotangent
cast to float64 (torch ``model.double()``; JAX under ``jax.enable_x64``, every floating
variable cast and every module's floating ``dtype`` attribute set to float64), from the same
values: the float32 numbers, exactly, in a wider type.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
from flax import nnx

from jaxembed._src.testing.optimizers import OptimizerPair
from jaxembed._src.testing.param_map import ParamMap

FLOAT64 = "float64"


@dataclasses.dataclass
class Spec:
    """What every run does (the same in both frameworks and both precisions)."""

    inputs: Any  # a tuple of positional arrays, or a dict of keyword arrays
    targets: Any
    torch_call: Callable | None
    jax_call: Callable | None
    torch_loss: Callable | None
    jax_loss: Callable | None
    optimizer: OptimizerPair | None
    steps: int
    gradients: bool
    jit: bool
    seed: int
    pmap: ParamMap
    weights: bool = False  # record the starting weights (the weights stage)
    cotangents: dict[str, np.ndarray] | None = None  # set by the first (torch) run

    @property
    def step_optimizer(self) -> OptimizerPair:
        """The optimizer of the ``steps`` (``compare`` refuses steps > 0 without one)."""
        if self.optimizer is None:
            raise ValueError("steps > 0 needs an optimizer")
        return self.optimizer


@dataclasses.dataclass
class Run:
    """One model's results in one precision; arrays in the JAX layouts, keyed by torch names."""

    weights: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    modules: dict[str, np.ndarray]  # torch module name (``name#2`` for a second call) -> output
    order: list[str]  # the modules in the order they returned
    loss: np.ndarray | None
    grads: dict[str, np.ndarray]
    steps: list[dict[str, np.ndarray]]
    step_losses: list[np.ndarray]
    seconds: float


# ---------------------------------------------------------------------------------------------
# Trees
# ---------------------------------------------------------------------------------------------


def flatten(tree, prefix: str = "output") -> dict[str, Any]:
    """Named leaves of a model output: mappings (``ModelOutput`` included) and NamedTuples by
    key, sequences by index, None dropped. ``{"output": x}`` for a single array."""
    if tree is None:
        return {}
    if isinstance(tree, Mapping):
        items = list(tree.items())
    elif isinstance(tree, tuple) and hasattr(tree, "_fields"):  # a NamedTuple: by field name
        items = list(zip(tree._fields, tree))
    elif isinstance(tree, (tuple, list)):
        items = list(enumerate(tree))
    else:
        return {prefix: tree}
    out = {}
    for k, v in items:
        out.update(flatten(v, f"{prefix}.{k}"))
    return out


def _is_float(a) -> bool:
    dtype = np.dtype(a.dtype)
    return np.issubdtype(dtype, np.floating) or dtype == ml_dtypes.bfloat16


def _map_arrays(tree, fn):
    if tree is None:
        return None
    if isinstance(tree, Mapping):
        return {k: _map_arrays(v, fn) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return (
            type(tree)(_map_arrays(v, fn) for v in tree)
            if isinstance(tree, list)
            else tuple(_map_arrays(v, fn) for v in tree)
        )
    return fn(np.asarray(tree))


def _widen(a: np.ndarray, precision: str) -> np.ndarray:
    return a.astype(np.float64) if precision == FLOAT64 and _is_float(a) else a


def _call(fn, model, inputs):
    if isinstance(inputs, Mapping):
        return fn(model, **inputs)
    return fn(model, *inputs)


def make_cotangents(outputs: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """A fixed random cotangent per float output (standard normal, in the output's dtype): the
    default loss is ``sum(output * cotangent)``, whose gradient is the vector-Jacobian product
    with that cotangent, identical in both frameworks."""
    rng = np.random.default_rng(seed)
    return {
        k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in outputs.items() if _is_float(v)
    }


# ---------------------------------------------------------------------------------------------
# torch
# ---------------------------------------------------------------------------------------------


def _torch_arrays(tree, precision):
    import torch

    from jaxembed._src.interop import numpy_to_torch

    def convert(a):
        a = _widen(a, precision)
        if np.issubdtype(a.dtype, np.integer):
            return torch.from_numpy(a.astype(np.int64))  # torch's index dtype
        return numpy_to_torch(a)

    return _map_arrays(tree, convert)


def _torch_numpy(t) -> np.ndarray:
    from jaxembed._src.interop import torch_to_numpy

    if t.is_sparse:
        t = t.coalesce().to_dense()
    return torch_to_numpy(t)


def _torch_loss(spec: Spec, out, targets, cot):
    if spec.torch_loss is not None:
        return spec.torch_loss(out, targets)
    leaves = {k: v for k, v in flatten(out).items() if k in cot}
    return sum((v * cot[k]).sum() for k, v in leaves.items())


def run_torch(torch_model, spec: Spec, precision: str) -> Run:
    import torch

    start = time.perf_counter()
    model = copy.deepcopy(torch_model)
    if precision == FLOAT64:
        model = model.double()
    model.eval()
    inputs = _torch_arrays(spec.inputs, precision)
    targets = _torch_arrays(spec.targets, precision)
    call = spec.torch_call or (lambda m, *a, **k: m(*a, **k))
    weights = {}
    if spec.weights:  # the weights stage (the port loaded its own weights)
        state = model.state_dict()
        weights = {
            e.torch_name: e.to_jax(_torch_numpy(state[e.torch_name])) for e in spec.pmap.entries
        }

    recorded: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}

    def hook(name):
        def record(module, args, output):
            first = next((v for v in flatten(output).values() if isinstance(v, torch.Tensor)), None)
            if first is not None:
                counts[name] = counts.get(name, 0) + 1
                key = name if counts[name] == 1 else f"{name}#{counts[name]}"
                recorded[key] = _torch_numpy(first.detach().clone())

        return record

    optimizers: list[Any] = []
    if spec.steps:
        sparse_ids = {
            id(m.weight)
            for m in model.modules()
            if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag)) and m.sparse
        }
        params = [p for p in model.parameters() if p.requires_grad]
        optimizers = spec.step_optimizer.torch_optimizers(
            [p for p in params if id(p) not in sparse_ids],
            [p for p in params if id(p) in sparse_ids],
        )
    # One pass per step (at least one): the first pass's forward, module outputs and gradients
    # (before its update) are the forward and gradient stages.
    loss_value, grads, steps, step_losses = None, {}, [], []
    for step in range(max(1, spec.steps)):
        for o in optimizers:
            o.zero_grad(set_to_none=True)
        handles = [
            m.register_forward_hook(hook(n))
            for n, m in model.named_modules()
            if step == 0 and n in spec.pmap.modules
        ]
        try:
            with torch.set_grad_enabled(spec.gradients):
                out = _call(call, model, inputs)
        finally:
            for h in handles:
                h.remove()
        if step == 0:
            outputs = {
                k: _torch_numpy(v) for k, v in flatten(out).items() if isinstance(v, torch.Tensor)
            }
            if spec.cotangents is None:
                spec.cotangents = make_cotangents(outputs, spec.seed)
            cot = _torch_arrays(spec.cotangents, precision)
        if not spec.gradients:
            break
        loss = _torch_loss(spec, out, targets, cot)
        loss.backward()
        if step == 0:
            loss_value = _torch_numpy(loss)
            for e in spec.pmap.entries:
                if e.trainable:
                    p = model.get_parameter(e.torch_name)
                    g = (
                        np.zeros(e.torch_shape, _torch_numpy(p).dtype)
                        if p.grad is None
                        else (_torch_numpy(p.grad))
                    )
                    grads[e.torch_name] = e.to_jax(g)
        if spec.steps:
            for o in optimizers:
                o.step()
            step_losses.append(_torch_numpy(loss))
            state = model.state_dict()
            steps.append(
                {
                    e.torch_name: e.to_jax(_torch_numpy(state[e.torch_name]))
                    for e in spec.pmap.entries
                }
            )
    return Run(
        weights,
        outputs,
        recorded,
        list(recorded),
        loss_value,
        grads,
        steps,
        step_losses,
        time.perf_counter() - start,
    )


# ---------------------------------------------------------------------------------------------
# JAX
# ---------------------------------------------------------------------------------------------


def _jax_arrays(tree, precision):
    def convert(a):
        a = _widen(a, precision)
        if np.issubdtype(a.dtype, np.integer) and a.dtype.itemsize == 8 and precision != FLOAT64:
            a = a.astype(np.int32)  # what jnp.asarray gives without x64, said explicitly
        return jnp.asarray(a)

    return _map_arrays(tree, convert)


def _jax_loss(spec: Spec, out, targets, cot):
    if spec.jax_loss is not None:
        return spec.jax_loss(out, targets)
    leaves = {k: v for k, v in flatten(out).items() if k in cot}
    return sum(jnp.sum(v * cot[k]) for k, v in leaves.items())


def _widen_tree(tree):
    return jax.tree.map(
        lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


def _widen_nnx(model) -> None:
    """The model in float64: every floating variable, and every module's floating ``dtype``
    (flax's computation dtype; jaxembed's ``Embed`` resolves None to the table's dtype)."""
    floats = [
        var
        for _, var in nnx.to_flat_state(nnx.state(model))
        if isinstance(var.get_value(), jax.Array)
        and jnp.issubdtype(var.get_value().dtype, jnp.floating)
    ]
    # one compiled cast for all of them (a cast per shape would compile a dozen times)
    wide = jax.jit(lambda vs: [v.astype(jnp.float64) for v in vs])([v.get_value() for v in floats])
    for var, value in zip(floats, wide):
        var.set_value(value)
    for _, module in nnx.iter_modules(model):
        dtype = getattr(module, "dtype", None)
        if dtype is not None and _is_float_dtype(dtype):
            setattr(module, "dtype", jnp.float64)  # noqa: B010 (not every Module has a dtype)


def _is_float_dtype(dtype) -> bool:
    try:
        return jnp.issubdtype(jnp.dtype(dtype), jnp.floating)
    except TypeError:
        return False


def _value(x):
    return x.get_value() if isinstance(x, nnx.Variable) else x


def _dense_rows(rows, shape) -> np.ndarray:
    """A ``SparseRows`` gradient as the dense (coalesced) gradient torch's ``to_dense`` gives."""
    ids, values = np.asarray(rows.ids), np.asarray(rows.values)
    keep = ids < shape[0]
    out = np.zeros(shape, values.dtype)
    np.add.at(out, ids[keep], values[keep])
    return out


# Each recorded module output goes to the sink of the trace that is running (a context variable,
# so that nothing is recorded outside compare's own traces).
_SINK: contextvars.ContextVar = contextvars.ContextVar("jaxembed_testing_sink", default=None)
_RECORDING_CLASSES: dict[type, type] = {}


def _recording_class(cls: type) -> type:
    """A subclass of ``cls`` whose ``__call__`` also hands its first output array to the sink."""
    if cls not in _RECORDING_CLASSES:

        def __call__(self, *args, **kwargs):
            out = cls.__call__(self, *args, **kwargs)
            sink = _SINK.get()
            if sink is not None:
                names, recorded = sink
                name = names.get(id(self))
                first = next((v for v in flatten(out).values() if isinstance(v, jax.Array)), None)
                if name is not None and first is not None:
                    n = sum(1 for k in recorded if k == name or k.startswith(name + "#")) + 1
                    recorded[name if n == 1 else f"{name}#{n}"] = first
            return out

        _RECORDING_CLASSES[cls] = type(
            cls.__name__,
            (cls,),
            {
                "__call__": __call__,
                "__module__": cls.__module__,
                "__qualname__": cls.__qualname__,
                "__slots__": (),
            },
        )
    return _RECORDING_CLASSES[cls]


def _nnx_record(model, jax_to_torch: dict[str, str]) -> None:
    """Swaps the classes of the mapped submodules of ``model`` (a clone) for recording ones."""
    for path, m in nnx.iter_modules(model):
        if path and ".".join(map(str, path)) in jax_to_torch and callable(m):
            m.__class__ = _recording_class(type(m))


@contextlib.contextmanager
def _recording(model, jax_to_torch: dict[str, str]):
    """Collects the outputs of ``model``'s recording submodules (see :func:`_nnx_record`) while
    the block runs, keyed by torch module name; ``model`` is the one being traced."""
    names = {
        id(m): jax_to_torch[".".join(map(str, p))]
        for p, m in nnx.iter_modules(model)
        if ".".join(map(str, p)) in jax_to_torch
    }
    recorded: dict[str, jax.Array] = {}
    token = _SINK.set((names, recorded))
    try:
        yield recorded
    finally:
        _SINK.reset(token)


def _jax_to_torch(pmap: ParamMap) -> dict[str, str]:
    return {j: t for t, j in pmap.modules.items()}


def _nnx_grads(entries, variables, grads, rows) -> dict[str, np.ndarray]:
    """The gradients of the trainable entries (sparse tables densified; zeros where JAX gives
    none), keyed by torch name."""
    flat_g = {p: _value(v) for p, v in nnx.to_flat_state(grads)}
    flat_rows = {} if rows is None else dict(nnx.to_flat_state(rows))
    out = {}
    for e in entries:
        if not e.trainable:
            continue
        if e.jax_path in flat_rows:
            out[e.torch_name] = _dense_rows(flat_rows[e.jax_path], e.jax_shape)
        elif e.jax_path in flat_g:
            out[e.torch_name] = np.asarray(flat_g[e.jax_path])
        else:
            value = variables[e.jax_path].get_value()
            out[e.torch_name] = np.zeros(value.shape, value.dtype)
    return out


def run_nnx(jax_model, spec: Spec, precision: str) -> Run:
    from jaxembed._src.nnx import sparse as sparse_nnx

    start = time.perf_counter()
    with jax.enable_x64(precision == FLOAT64):
        model = nnx.clone(jax_model)
        if precision == FLOAT64:
            _widen_nnx(model)
        model.eval()
        variables = dict(nnx.to_flat_state(nnx.state(model)))
        entries = spec.pmap.entries

        def snapshot():
            return {e.torch_name: np.asarray(variables[e.jax_path].get_value()) for e in entries}

        weights = snapshot() if spec.weights else {}
        jax_to_torch = _jax_to_torch(spec.pmap)
        _nnx_record(model, jax_to_torch)
        inputs = _jax_arrays(spec.inputs, precision)
        targets = _jax_arrays(spec.targets, precision)
        cot = _jax_arrays(spec.cotangents, precision)
        call = spec.jax_call or (lambda m, *a, **k: m(*a, **k))
        has_sparse = any(isinstance(v, sparse_nnx.SparseParam) for v in variables.values())

        def forward(m, inputs, targets, cot):
            with _recording(m, jax_to_torch) as recorded:
                out = _call(call, m, inputs)
            return out, recorded

        def loss_fn(m, inputs, targets, cot):
            out, recorded = forward(m, inputs, targets, cot)
            return _jax_loss(spec, out, targets, cot), (out, recorded)

        def value_and_grads(m, inputs, targets, cot):
            if has_sparse:
                (loss, aux), grads, rows = sparse_nnx.value_and_grad(loss_fn, has_aux=True)(
                    m, inputs, targets, cot
                )
            else:
                (loss, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(
                    m, inputs, targets, cot
                )
                rows = None
            return loss, aux, grads, rows

        opt = sopt = None
        if spec.steps:
            pair = spec.step_optimizer
            has_params = any(isinstance(v, nnx.Param) for v in variables.values())
            if has_params and pair.optax is None:
                raise ValueError(f"{pair.label} has no optax transformation for nnx.Param")
            if has_sparse and pair.sparse is None:
                raise ValueError(f"{pair.label} has no sparse optimizer for the sparse tables")

            sparse_tx = pair.sparse  # not None when has_sparse (checked above)

            def optimizers(m):  # jitted: the states' zeros in one compile, not one per shape
                return (
                    nnx.Optimizer(m, pair.optax, wrt=nnx.Param) if has_params else None,
                    sparse_nnx.Optimizer(m, sparse_tx)
                    if has_sparse and sparse_tx is not None
                    else None,
                )

            opt, sopt = (nnx.jit(optimizers) if spec.jit else optimizers)(model)

        def train_step(m, opt, sopt, inputs, targets, cot):
            loss, aux, grads, rows = value_and_grads(m, inputs, targets, cot)
            if opt is not None:
                opt.update(m, grads)
            if sopt is not None:
                sopt.update(m, rows)
            return loss, aux, grads, rows

        jit = nnx.jit if spec.jit else (lambda f: f)
        loss_value, grads, steps, step_losses = None, {}, [], []
        if not spec.gradients:
            out, recorded = jit(forward)(model, inputs, targets, cot)
        step = jit(train_step)
        for k in range(max(1, spec.steps) if spec.gradients else 0):
            # One compiled step: the first call's outputs and gradients (before its update) are
            # the forward and gradient stages.
            loss, aux, g, rows = step(model, opt, sopt, inputs, targets, cot)
            if k == 0:
                out, recorded = aux
                loss_value = np.asarray(loss)
                grads = _nnx_grads(entries, variables, g, rows)
            if spec.steps:
                step_losses.append(np.asarray(loss))
                variables = dict(nnx.to_flat_state(nnx.state(model)))
                steps.append(snapshot())
        outputs = {k: np.asarray(v) for k, v in flatten(out).items() if isinstance(v, jax.Array)}
        modules = {k: np.asarray(v) for k, v in recorded.items()}
    return Run(
        weights,
        outputs,
        modules,
        list(modules),
        loss_value,
        grads,
        steps,
        step_losses,
        time.perf_counter() - start,
    )


def run_linen(jax_model, spec: Spec, precision: str) -> Run:
    from flax import traverse_util

    start = time.perf_counter()
    module, variables = jax_model
    if "sparse_params" in variables:
        raise NotImplementedError(
            "jaxembed.testing compares Linen models whose tables are dense; a Linen "
            "Embed(sparse=True) needs the row-probe training step (docs/guides/sparse.md, "
            "Linen). Compare the NNX module instead (jaxembed.Embed(sparse=True))."
        )
    with jax.enable_x64(precision == FLOAT64):
        variables = jax.tree.map(jnp.asarray, dict(variables))
        if precision == FLOAT64:
            variables = _widen_tree(variables)
        params = variables.get("params", {})
        others = {k: v for k, v in variables.items() if k not in ("params", "intermediates")}
        entries = spec.pmap.entries

        def snapshot(variables):
            flat = traverse_util.flatten_dict(variables)
            return {e.torch_name: np.asarray(flat[e.jax_path]) for e in entries}

        weights = snapshot(variables) if spec.weights else {}
        jax_to_torch = _jax_to_torch(spec.pmap)
        inputs = _jax_arrays(spec.inputs, precision)
        targets = _jax_arrays(spec.targets, precision)
        cot = _jax_arrays(spec.cotangents, precision)
        call = spec.jax_call or (lambda m, *a, **k: m(*a, **k))

        def loss_fn(params, others, inputs, targets, cot):
            state = {}

            def model_fn(*args, **kwargs):
                out, new_state = module.apply(
                    {**others, "params": params},
                    *args,
                    **kwargs,
                    mutable=True,
                    capture_intermediates=True,
                )
                state.update(new_state)
                return out

            out = _call(call, model_fn, inputs)
            recorded = {}
            calls = traverse_util.flatten_dict(dict(state.pop("intermediates", {})))
            for path, values in calls.items():
                name = jax_to_torch.get(".".join(path[:-1]))
                if path[-1] != "__call__" or name is None:
                    continue
                for n, v in enumerate(values, 1):
                    first = next((x for x in flatten(v).values() if isinstance(x, jax.Array)), None)
                    if first is not None:
                        recorded[name if n == 1 else f"{name}#{n}"] = first
            new_params = state.pop("params", params)  # max_norm renorms, as torch's in place
            new_others = {k: state.get(k, v) for k, v in others.items()}
            return _jax_loss(spec, out, targets, cot), (out, recorded, new_params, new_others)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        tx = None
        if spec.steps:
            tx = spec.step_optimizer.optax
            if tx is None:
                raise ValueError(f"{spec.step_optimizer.label} has no optax transformation")

        def train_step(params, others, opt_state, inputs, targets, cot):
            (loss, (out, recorded, params, others)), g = grad_fn(
                params, others, inputs, targets, cot
            )
            if tx is not None:
                updates, opt_state = tx.update(g, opt_state, params)
                params = optax.apply_updates(params, updates)
            return params, others, opt_state, loss, (out, recorded), g

        jit = jax.jit if spec.jit else (lambda f: f)
        loss_value, grads, steps, step_losses = None, {}, [], []
        if not spec.gradients:
            _, (out, recorded, _, _) = jit(loss_fn)(params, others, inputs, targets, cot)
        step = jit(train_step)
        opt_state = None if tx is None else tx.init(params)
        for k in range(max(1, spec.steps) if spec.gradients else 0):
            params, others, opt_state, loss, aux, g = step(
                params, others, opt_state, inputs, targets, cot
            )
            if k == 0:  # the forward and gradient stages, before the first update
                out, recorded = aux
                loss_value = np.asarray(loss)
                flat_g = traverse_util.flatten_dict({"params": g})
                grads = {
                    e.torch_name: np.asarray(flat_g[e.jax_path]) for e in entries if e.trainable
                }
            if spec.steps:
                step_losses.append(np.asarray(loss))
                steps.append(snapshot({**others, "params": params}))
        outputs = {k: np.asarray(v) for k, v in flatten(out).items() if isinstance(v, jax.Array)}
        order = list(recorded)
        modules = {k: np.asarray(v) for k, v in recorded.items()}
    return Run(
        weights,
        outputs,
        modules,
        order,
        loss_value,
        grads,
        steps,
        step_losses,
        time.perf_counter() - start,
    )
