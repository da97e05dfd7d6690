"""Runs jaxembed's vocab-parallel lookups on an 8-device CPU mesh and saves what they return.

``test_sharding.py`` starts this in a subprocess (XLA_FLAGS must be set before JAX starts, and
the rest of the suite runs single-device) and compares the saved arrays with torch and with
single-device JAX. The inputs are built here, from fixed seeds, for both sides.

    python parity_tests/sharding_worker.py OUT.npz
"""

from __future__ import annotations

import os
import re
import sys
import time

import numpy as np

V, D = 64, 8
BATCH, SEQ = 8, 6
PADDING_IDX = 5
MAX_NORM = 1.5
LR = 0.1
STEPS = 5
# (mesh shape, axis names, axis type): the vocab axis is "model"; "data" splits the batch.
MESHES = [
    ((8,), ("model",), "explicit"),
    ((2, 4), ("data", "model"), "explicit"),
    ((4, 2), ("data", "model"), "explicit"),
    ((2, 4), ("data", "model"), "auto"),  # Auto meshes: one suffices (same code; runtime)
]


def mesh_key(shape, kind) -> str:
    return f"{kind}{'x'.join(map(str, shape))}"


def inputs():
    """The table (with a -0.0 entry and rows above MAX_NORM), ids with duplicates and the
    padding id, out-of-range ids, and the output-gradient weights of the loss."""
    rng = np.random.default_rng(0)
    table = (rng.normal(size=(V, D)) * 0.8).astype(np.float32)
    table[9, 2] = -0.0
    ids = rng.integers(0, V, size=(BATCH, SEQ))
    ids[0, :3] = [9, PADDING_IDX, 9]
    ids[3, 4] = PADDING_IDX
    ids[5, 1:4] = [63, 0, 63]
    bad_ids = ids.copy()
    bad_ids[1, 2] = V
    bad_ids[6, 0] = -1
    gout = rng.normal(size=(BATCH, SEQ, D)).astype(np.float32)
    query = rng.normal(size=(BATCH, SEQ, D)).astype(np.float32)
    return table, ids, bad_ids, gout, query


_T0 = [time.perf_counter()]


def _timed(section, key):
    """Seconds since the last call, on stderr (the test prints them with -s)."""
    now = time.perf_counter()
    print(f"worker {key} {section}: {now - _T0[0]:.1f} s", file=sys.stderr)
    _T0[0] = now


def _host(x):
    """``x`` as a numpy array on every process (a global array is gathered across processes)."""
    import jax

    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)


def _put(x, sharding):
    """The host array ``x`` (the same on every process) laid out as ``sharding``."""
    import jax

    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


# sparse=True on the sharded table: trajectories with padding, duplicates and an all-padding
# batch; the test runs the same steps with torch's sparse optimizers.
SPARSE_STEPS = 6
SPARSE_OPTIMIZERS = ("sgd", "nesterov", "sparse_adam", "adagrad")
SPARSE_QUICK = ("sgd", "sparse_adam")  # on the other meshes and across processes
SPARSE_FULL_MESHES = ("explicit8", "explicit2x4")


def sparse_optimizers(key, quick=False):
    return SPARSE_OPTIMIZERS if key in SPARSE_FULL_MESHES and not quick else SPARSE_QUICK
NNX_SPARSE_STEPS = 4


def sparse_inputs():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, V, size=(SPARSE_STEPS, BATCH, SEQ))
    ids[:, 0, :3] = [9, PADDING_IDX, 9]  # duplicates and padding in every step
    ids[2] = PADDING_IDX  # an all-padding batch (torch: nnz = 0)
    gouts = rng.normal(size=(SPARSE_STEPS, BATCH, SEQ, D)).astype(np.float32)
    return ids, gouts


def sparse_optimizer(name, torch_params=None):
    """jaxembed's sparse optimizer ``name``, or torch's on ``torch_params``."""
    if torch_params is not None:
        import torch

        return {
            "sgd": lambda p: torch.optim.SGD(p, lr=LR),
            "nesterov": lambda p: torch.optim.SGD(p, lr=LR, momentum=0.9, nesterov=True),
            "sparse_adam": lambda p: torch.optim.SparseAdam(p, lr=0.05),
            "adagrad": lambda p: torch.optim.Adagrad(p, lr=LR),
        }[name](torch_params)
    from jaxembed import sparse

    return {
        "sgd": lambda: sparse.sgd(LR),
        "nesterov": lambda: sparse.sgd(LR, momentum=0.9, nesterov=True),
        "sparse_adam": lambda: sparse.sparse_adam(0.05),
        "adagrad": lambda: sparse.adagrad(LR),
    }[name]()


# EmbeddingBag on the sharded table: name -> (mode, options, 1-D input, per_sample_weights).
BAG_OFFSETS = np.array([0, 4, 4, 11, 20, 27])  # an empty bag; 30 ids
_PAD = {"padding_idx": PADDING_IDX}
BAG_CASES = {
    "sum": ("sum", {}, False, False),
    "sum_1d": ("sum", {}, True, False),
    "mean_pad": ("mean", _PAD, False, False),
    "mean_1d_pad": ("mean", _PAD, True, False),
    "max": ("max", {}, False, False),
    "max_1d_pad": ("max", _PAD, True, False),
    "sum_maxnorm": ("sum", {"max_norm": MAX_NORM}, False, False),
    "max_1d_maxnorm": ("max", {"max_norm": MAX_NORM}, True, False),
    "sum_sgbf": ("sum", {"scale_grad_by_freq": True, **_PAD}, False, False),
    "mean_1d_sgbf": ("mean", {"scale_grad_by_freq": True}, True, False),
    "sum_psw": ("sum", _PAD, False, True),
    "sum_1d_psw": ("sum", {}, True, True),
    "sum_1d_last": ("sum", {"include_last_offset": True}, True, False),
    "max_1d_last": ("max", {"include_last_offset": True}, True, False),
}
# Every case on this mesh (the batch split over "data" and the rows over "model"), a few
# elsewhere (and across processes): the same code runs on every mesh. (Each case compiles its
# forward and gradient per mesh: compilation is most of the worker's time.)
BAG_FULL_MESHES = ("explicit2x4",)
BAG_FEW = ("sum", "mean_1d_pad", "max_1d_pad", "sum_psw")


def bag_cases(key):
    return list(BAG_CASES) if key in BAG_FULL_MESHES else list(BAG_FEW)


def ties_table():
    """Small integers (ties between rows that different devices own), +0.0 and -0.0, and NaNs
    (one in the first position of a bag) for torch's max rules across shards."""
    rng = np.random.default_rng(3)
    t = -rng.integers(0, 2, size=(V, D)).astype(np.float32)  # 0 or -1: many tied maxima
    t[t == 0] = np.where(rng.random((t == 0).sum()) < 0.5, -0.0, 0.0)
    t[bag_inputs()[0][1, 0], 3] = np.nan  # the first id of bag 1
    t[bag_inputs()[0][4, 2], 5] = np.nan  # later in bag 4
    return t


def bag_inputs():
    rng = np.random.default_rng(2)
    ids2 = rng.integers(0, V, size=(BATCH, SEQ))
    ids2[0, :3] = [9, PADDING_IDX, 9]
    ids2[2] = PADDING_IDX  # an all-padding bag
    ids1 = rng.integers(0, V, size=(30,))
    ids1[[5, 12, 13]] = PADDING_IDX
    ids1[[21, 22]] = 9
    psw2 = rng.normal(size=ids2.shape).astype(np.float32)
    psw1 = rng.normal(size=ids1.shape).astype(np.float32)
    gout2 = rng.normal(size=(BATCH, D)).astype(np.float32)
    gout1 = rng.normal(size=(len(BAG_OFFSETS), D)).astype(np.float32)
    return ids2, ids1, psw2, psw1, gout2, gout1


def bag_case_inputs(one_d, kw):
    """(ids, offsets, per_sample_weights, output gradient) of one bag case."""
    ids2, ids1, psw2, psw1, gout2, gout1 = bag_inputs()
    if not one_d:
        return ids2, None, psw2, gout2
    last = kw.get("include_last_offset", False)
    return ids1, BAG_OFFSETS, psw1, gout1[: len(BAG_OFFSETS) - last]


def _collectives(compiled_text):
    """(op, result shape) of every collective in compiled HLO text; a collective that XLA
    combined from several (a tuple result) gives one entry per element."""
    ops = r"all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute"
    found = re.findall(r"= (\([^)]*\)|\S+) (" + ops + r")(?:-start)?\(", compiled_text)
    return [
        (op, shape)
        for result, op in found
        for shape in re.findall(r"\w+\[[\d,]*\]", result)
    ]


def run(out_path, ckpt_dir=None, quick=False):
    import jax
    import jax.numpy as jnp
    import optax
    from flax import linen as nn
    from flax import nnx
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

    import jaxembed
    from jaxembed._src.core import sharding as S

    assert jax.device_count() == 8, jax.devices()
    table, ids, bad_ids, gout, query = inputs()
    res = {}
    rules = dict(padding_idx=PADDING_IDX, scale_grad_by_freq=True)

    for shape, names, kind in MESHES:
        key = mesh_key(shape, kind)
        if quick and kind != "explicit":
            continue
        axis_type = AxisType.Explicit if kind == "explicit" else AxisType.Auto
        mesh = jax.make_mesh(shape, names, axis_types=(axis_type,) * len(shape))
        batch = P("data", None) if "data" in names else P(None, None)
        out_spec = P(*batch, None)
        with jax.set_mesh(mesh):
            t = _put(table, NamedSharding(mesh, P("model", None)))
            i = _put(ids, NamedSharding(mesh, batch))
            bad = _put(bad_ids, NamedSharding(mesh, batch))
            g = _put(gout, NamedSharding(mesh, out_spec))

            def lookup(t, i, **kw):
                return S.vocab_parallel_embedding(
                    i, t, vocab_axis="model", out_sharding=out_spec, **kw
                )

            fwd = jax.jit(lookup)
            res[f"{key}/rows"] = _host(fwd(t, i))
            res[f"{key}/rows_spec_ok"] = _host(
                fwd(t, i).sharding.spec == out_spec
                or (kind == "auto" and tuple(fwd(t, i).sharding.spec) == tuple(batch)[:1])
            )
            res[f"{key}/oob_rows"] = _host(fwd(t, bad))
            if not quick:  # bf16 rows
                # bfloat16: the rows travel as uint32 pairs; still a bit-exact copy.
                t16 = _put(table.astype(jnp.bfloat16), NamedSharding(mesh, P("model", None)))
                res[f"{key}/rows_bf16_bits"] = _host(fwd(t16, i)).view(np.uint16)

            # (Global arrays are arguments, never closed over: with several processes a
            # jitted function cannot capture an array that spans other processes' devices.)
            def loss(t, i, g, **kw):
                return jnp.sum(lookup(t, i, **kw) * g)

            grad = jax.jit(jax.grad(loss), static_argnames=("padding_idx", "scale_grad_by_freq"))
            res[f"{key}/grad"] = _host(grad(t, i, g, **rules))
            res[f"{key}/grad_plain"] = _host(grad(t, i, g))
            res[f"{key}/oob_grad"] = _host(grad(t, bad, g, **rules))
            res[f"{key}/grad_spec_ok"] = _host(
                tuple(grad(t, i, g, **rules).sharding.spec)[:1] == ("model",)
            )

            # max_norm: the rows and the table written back, sharded.
            renorm = jax.jit(
                lambda t, i: S.vocab_parallel_embed_and_renorm(
                    i, t, max_norm=MAX_NORM, vocab_axis="model", out_sharding=out_spec, **rules
                )
            )
            rows, new_table = renorm(t, i)
            res[f"{key}/renorm_rows"] = _host(rows)
            res[f"{key}/renorm_table"] = _host(new_table)
            res[f"{key}/renorm_fn_table"] = _host(
                jax.jit(
                    lambda t, i: jaxembed.sharding.vocab_parallel_embedding_renorm(
                        t, i, MAX_NORM, vocab_axis="model"
                    )
                )(t, i)
            )
            if not quick:  # errors
                try:  # 63 rows (odd) cannot be split over 8, 4 or 2 vocab shards
                    S.vocab_parallel_embedding(ids % 63, jnp.asarray(table[:63]), vocab_axis="model")
                    res[f"{key}/indivisible_error"] = _host("")
                except ValueError as e:
                    res[f"{key}/indivisible_error"] = _host(str(e))
            res[f"{key}/renorm_table_shard_rows"] = _host(
                sorted({s.data.shape[0] for s in new_table.addressable_shards})
            )

            if not quick:  # compiled HLO, attend
                # The compiled lookup: collectives and their shapes.
                res[f"{key}/hlo_fwd"] = _host(
                    repr(_collectives(fwd.lower(t, i).compile().as_text()))
                )
                res[f"{key}/hlo_grad"] = _host(
                    repr(_collectives(grad.lower(t, i, g, **rules).compile().as_text()))
                )
                attend = jax.jit(lambda q, t: jaxembed.functional.attend(q, t))
                q = _put(query, NamedSharding(mesh, out_spec))
                logits = attend(q, t)
                res[f"{key}/logits"] = _host(logits)
                res[f"{key}/logits_spec"] = _host(repr(tuple(logits.sharding.spec)))
                res[f"{key}/hlo_attend"] = _host(
                    repr(_collectives(attend.lower(q, t).compile().as_text()))
                )

            # nnx module: 5 SGD steps with padding_idx, max_norm and scale_grad_by_freq.
            model = jaxembed.Embed(
                V,
                D,
                max_norm=MAX_NORM,
                embedding_init=jaxembed.Pretrained(table),
                embedding_metadata={"out_sharding": ("model", None)},
                rngs=nnx.Rngs(0),
                **rules,
            )
            res[f"{key}/nnx_shard_rows"] = _host(
                sorted({s.data.shape[0] for s in model.embedding.get_value().addressable_shards})
            )
            opt = nnx.Optimizer(model, optax.sgd(LR), wrt=nnx.Param)

            @nnx.jit
            def step(model, opt, i, g):
                def f(model):
                    return jnp.sum(model(i, out_sharding=out_spec) * g)

                grads = nnx.grad(f)(model)
                opt.update(model, grads)

            for _ in range(STEPS):
                # Wait for each step: several 8-device programs in flight can deadlock
                # XLA:CPU's collective rendezvous on a small host.
                step(model, opt, i, g)
                jax.block_until_ready(model.embedding.get_value())
            res[f"{key}/nnx_traj"] = _host(model.embedding.get_value())
            res[f"{key}/nnx_traj_shard_rows"] = _host(
                sorted({s.data.shape[0] for s in model.embedding.get_value().addressable_shards})
            )
            if not quick:  # attend
                logits = nnx.jit(lambda m, q: m.attend(q, out_sharding=P(*batch, "model")))(model, q)
                res[f"{key}/nnx_attend_spec"] = _host(repr(tuple(logits.sharding.spec)))

            if not quick:  # from_pretrained, linen
                # from_pretrained with a table already sharded from the host: it stays V/k rows.
                pre = jaxembed.Embed.from_pretrained(
                    _put(table, NamedSharding(mesh, P("model", None))),
                    embedding_metadata={"out_sharding": ("model", None)},
                )
                res[f"{key}/pretrained_rows"] = _host(
                    nnx.jit(lambda m, i: m(i, out_sharding=out_spec))(pre, i)
                )
                res[f"{key}/pretrained_shard_rows"] = _host(
                    sorted({s.data.shape[0] for s in pre.embedding.get_value().addressable_shards})
                )

                # linen module: forward with the renorm write-back and its gradient.
                lin = jaxembed.linen.Embed(
                    V,
                    D,
                    max_norm=MAX_NORM,
                    embedding_init=nn.with_partitioning(jaxembed.Pretrained(table), ("model", None)),
                    **rules,
                )
                variables = jax.jit(lin.init)(jax.random.key(0), i)
                variables = jax.device_put(variables, nn.get_sharding(variables, mesh))

                @jax.jit
                def linen_fwd(variables, i):
                    return lin.apply(variables, i, out_sharding=out_spec, mutable=["params"])

                out, new = linen_fwd(variables, i)
                res[f"{key}/linen_rows"] = _host(out)
                res[f"{key}/linen_table"] = _host(nn.unbox(new)["params"]["embedding"])
                lgrad = jax.jit(
                    jax.grad(lambda v, i: jnp.sum(lin.apply(v, i, out_sharding=out_spec) * g))
                )(variables, i)
                res[f"{key}/linen_grad"] = _host(nn.unbox(lgrad)["params"]["embedding"])

            _timed("embed", key)
            _run_sparse(res, key, mesh, kind, batch, out_spec, table, quick)
            _timed("sparse", key)
            _run_bags(res, key, mesh, batch, table, quick)
            _timed("bags", key)
            _run_out_of_range(res, key, mesh, batch, out_spec, table, ids, bad_ids)
            if key == "explicit2x4" and ckpt_dir is not None:
                _run_checkpoint(res, key, mesh, table, ckpt_dir)
            _timed("oob+ckpt", key)

    if jax.process_index() == 0:
        np.savez(out_path, **res)


def _run_sparse(res, key, mesh, kind, batch, out_spec, table, quick=False):
    """sparse=True: functional trajectories with each optimizer, and an NNX training step."""
    import functools

    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P

    import jaxembed
    from jaxembed import sparse
    from jaxembed._src.core import sharding as S

    ids, gouts = sparse_inputs()
    table_spec = P("model", None)
    # Under an Auto mesh jit does not type the table's layout: the optimizer is told it.
    specs = table_spec if kind == "auto" else None
    for name in sparse_optimizers(key, quick):
        tx = sparse_optimizer(name)

        @functools.partial(jax.jit, donate_argnums=(0, 1))
        def step(t, state, i, g):
            rows = S.vocab_parallel_embedding(
                i, t, padding_idx=PADDING_IDX, sparse=True, vocab_axis="model",
                out_sharding=out_spec,
            )
            rows_grad = jax.grad(lambda r: jnp.sum(r * g))(rows)
            row_grads = sparse.row_gradients(i, rows_grad, V, PADDING_IDX)
            return tx.update(row_grads, state, t, table_specs=specs)

        t = _put(table, NamedSharding(mesh, table_spec))
        state = tx.init(t)
        for n, (b, g) in enumerate(zip(ids, gouts)):
            bi, gi = _put(b, NamedSharding(mesh, batch)), _put(g, NamedSharding(mesh, out_spec))
            if name in ("sgd", "sparse_adam") and n == 0 and not quick:
                res[f"{key}/hlo_sparse_{name}"] = _host(
                    repr(_collectives(step.lower(t, state, bi, gi).compile().as_text()))
                )
            t, state = step(t, state, bi, gi)
            jax.block_until_ready(t)
        res[f"{key}/sparse_{name}"] = _host(t)
        res[f"{key}/sparse_{name}_state_rows"] = _host(sorted({
            s.data.shape[0] for x in jax.tree.leaves(state) if x.ndim == 2
            for s in x.addressable_shards
        }))

    # NNX: a sparse table (max_norm, padding) and a dense scale, SparseAdam + optax SGD.
    class Model(nnx.Module):
        def __init__(self):
            self.embed = jaxembed.Embed(
                V, D, padding_idx=PADDING_IDX, max_norm=MAX_NORM, sparse=True,
                embedding_init=jaxembed.Pretrained(table), rngs=nnx.Rngs(0),
                embedding_metadata={"out_sharding": table_spec},
            )
            self.scale = nnx.Param(jnp.linspace(0.5, 1.5, D, dtype=jnp.float32))

        def __call__(self, i):
            return self.embed(i, out_sharding=out_spec) * self.scale

    model = Model()
    opt = nnx.Optimizer(model, optax.sgd(0.01), wrt=nnx.Param)
    sopt = sparse.Optimizer(model, sparse.sparse_adam(0.05))

    @nnx.jit(donate_argnums=(0, 1, 2))
    def nnx_step(model, opt, sopt, i, g):
        loss, grads, row_grads = sparse.value_and_grad(lambda m: jnp.sum(m(i) * g))(model)
        opt.update(model, grads)
        sopt.update(model, row_grads)
        return loss

    for b, g in zip(ids[:NNX_SPARSE_STEPS], gouts):
        nnx_step(model, opt, sopt, _put(b, NamedSharding(mesh, batch)),
                 _put(g, NamedSharding(mesh, out_spec)))
        jax.block_until_ready(model.embed.embedding.get_value())
    res[f"{key}/nnx_sparse"] = _host(model.embed.embedding.get_value())
    res[f"{key}/nnx_sparse_rows"] = _host(sorted(
        {s.data.shape[0] for s in model.embed.embedding.get_value().addressable_shards}
    ))


def _run_bags(res, key, mesh, batch, table, quick=False):
    """EmbeddingBag on the sharded table: forward and gradients of every case."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    from jaxembed._src.core import sharding as S

    t = _put(table, NamedSharding(mesh, P("model", None)))
    for name in BAG_FEW if quick else bag_cases(key):
        mode, kw, one_d, use_psw = BAG_CASES[name]
        ids, offsets, psw, gout = bag_case_inputs(one_d, kw)
        rep = NamedSharding(mesh, P())
        out_spec = P(batch[0], None) if not one_d else P(None, None)
        i = _put(ids, NamedSharding(mesh, batch) if not one_d else rep)
        o = None if offsets is None else _put(offsets, rep)
        p = _put(psw, NamedSharding(mesh, batch) if not one_d else rep) if use_psw else None
        g = _put(gout, NamedSharding(mesh, out_spec))

        def bag(t, p, i, o):
            return S.vocab_parallel_embedding_bag(
                i, t, o, mode=mode, per_sample_weights=p, vocab_axis="model",
                out_sharding=out_spec, **kw
            )

        fwd = jax.jit(bag)
        res[f"{key}/bag_{name}"] = _host(fwd(t, p, i, o))
        argnums = (0, 1) if use_psw else 0
        grads = jax.jit(jax.grad(lambda t, p, i, o, g: jnp.sum(bag(t, p, i, o) * g), argnums))(
            t, p, i, o, g
        )
        gt, gp = grads if use_psw else (grads, None)
        res[f"{key}/bag_{name}_grad"] = _host(gt)
        if use_psw:
            res[f"{key}/bag_{name}_psw_grad"] = _host(gp)
        if name in ("sum", "max") and not quick:
            hlo = fwd.lower(t, p, i, o).compile().as_text()
            res[f"{key}/hlo_bag_{name}"] = _host(repr(_collectives(hlo)))
    if not quick and key in ("explicit8", "explicit2x4"):  # max across 8 and 4 vocab shards
        ties = _put(ties_table(), NamedSharding(mesh, P("model", None)))
        ids2, ids1, _, _, _, _ = bag_inputs()
        rep = NamedSharding(mesh, P())
        res[f"{key}/bag_max_ties"] = _host(jax.jit(lambda t, i: S.vocab_parallel_embedding_bag(
            i, t, mode="max", vocab_axis="model", out_sharding=P(batch[0], None)))(
            ties, _put(ids2, NamedSharding(mesh, batch))))
        res[f"{key}/bag_max_1d_ties"] = _host(jax.jit(lambda t, i, o: S.vocab_parallel_embedding_bag(
            i, t, o, mode="max", padding_idx=PADDING_IDX, vocab_axis="model"))(
            ties, _put(ids1, rep), _put(BAG_OFFSETS, rep)))
    if not quick and key in BAG_FULL_MESHES:
        _run_bag_modules(res, key, mesh, batch, table)


def _run_bag_modules(res, key, mesh, batch, table):
    """The NNX and Linen EmbeddingBag modules on a row-sharded table (same numbers as the
    functions: test_sharding.py compares them bit for bit)."""
    import jax
    from flax import linen as nn
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P

    import jaxembed

    ids, _, _, _ = bag_case_inputs(False, {})
    bag = jaxembed.EmbeddingBag(
        V, D, mode="sum", embedding_init=jaxembed.Pretrained(table), rngs=nnx.Rngs(0),
        embedding_metadata={"out_sharding": ("model", None)},
    )
    i = _put(ids, NamedSharding(mesh, batch))
    res[f"{key}/nnx_bag_sum"] = _host(
        nnx.jit(lambda m, i: m(i, out_sharding=P(batch[0], None)))(bag, i)
    )
    res[f"{key}/nnx_bag_rows"] = _host(
        sorted({s.data.shape[0] for s in bag.embedding.get_value().addressable_shards})
    )
    mode, kw, _, _ = BAG_CASES["max_1d_pad"]
    ids1, offsets, _, _ = bag_case_inputs(True, kw)
    lin = jaxembed.linen.EmbeddingBag(
        V, D, mode=mode, embedding_init=nn.with_partitioning(jaxembed.Pretrained(table),
                                                             ("model", None)), **kw,
    )
    rep = NamedSharding(mesh, P())
    i1, o = _put(ids1, rep), _put(offsets, rep)
    variables = jax.jit(lin.init)(jax.random.key(0), i1, o)
    res[f"{key}/linen_bag_max_1d_pad"] = _host(jax.jit(lin.apply)(variables, i1, o))


def _run_out_of_range(res, key, mesh, batch, out_spec, table, ids, bad_ids):
    """Out-of-range ids: the count (the error channel), NaN bags and sparse rows."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    import jaxembed
    from jaxembed._src.core import sharding as S

    count = jax.jit(lambda i: jaxembed.sharding.count_out_of_range(i, V))
    res[f"{key}/oob_count_valid"] = _host(count(_put(ids, NamedSharding(mesh, batch))))
    bad = _put(bad_ids, NamedSharding(mesh, batch))
    res[f"{key}/oob_count_bad"] = _host(count(bad))
    t = _put(table, NamedSharding(mesh, P("model", None)))
    res[f"{key}/oob_bag"] = _host(jax.jit(lambda t, i: S.vocab_parallel_embedding_bag(
        i, t, mode="sum", padding_idx=PADDING_IDX, vocab_axis="model",
        out_sharding=P(batch[0], None)))(t, bad))
    res[f"{key}/oob_sparse_rows"] = _host(jax.jit(lambda t, i: S.vocab_parallel_embedding(
        i, t, padding_idx=PADDING_IDX, sparse=True, vocab_axis="model",
        out_sharding=out_spec))(t, bad))


def _run_checkpoint(res, key, mesh, table, ckpt_dir):
    """orbax round trip of a row-sharded table: each process writes and reads its own shards."""
    import jax
    import jax.numpy as jnp
    import orbax.checkpoint as ocp
    from jax.sharding import NamedSharding, PartitionSpec as P

    sharding = NamedSharding(mesh, P("model", None))
    t = jax.jit(lambda t: t * 2, out_shardings=sharding)(_put(table, sharding))
    path = os.path.join(os.path.abspath(ckpt_dir), key)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path, {"table": t})
    ckptr.wait_until_finished()
    abstract = {"table": jax.ShapeDtypeStruct(t.shape, t.dtype, sharding=sharding)}
    back = ckptr.restore(path, abstract)["table"]
    res[f"{key}/ckpt_table"] = _host(back)
    res[f"{key}/ckpt_spec"] = _host(repr(tuple(back.sharding.spec)))
    res[f"{key}/ckpt_shard_rows"] = _host(sorted({s.data.shape[0] for s in back.addressable_shards}))
    del jnp


def main(argv):
    """``OUT.npz [CKPT_DIR]``: one process with 8 devices; ``OUT.npz CKPT_DIR PORT PROCESS_ID``:
    one of 2 processes with 4 devices each, joined by ``jax.distributed`` (gloo collectives)
    over loopback, running the same computations on the same 8-device Explicit meshes (the
    ``quick`` subset: no HLO inspection, error cases, attend, from_pretrained or Linen, and
    the few bag cases)."""
    multi = len(argv) > 2
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={4 if multi else 8}"
    )
    os.environ["JAX_PLATFORMS"] = "cpu"
    if multi:
        import jax

        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{argv[2]}", num_processes=2,
            process_id=int(argv[3]), initialization_timeout=60,
        )
    run(argv[0], argv[1] if len(argv) > 1 else None, quick=multi)


if __name__ == "__main__":
    main(sys.argv[1:])
