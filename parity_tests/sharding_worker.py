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


def _collectives(compiled_text):
    """(op, result shape) of every collective in compiled HLO text."""
    ops = r"all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute"
    return [
        (op, shape)
        for shape, op in re.findall(r"= (\S+) (" + ops + r")(?:-start)?\(", compiled_text)
    ]


def run(out_path):
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
        axis_type = AxisType.Explicit if kind == "explicit" else AxisType.Auto
        mesh = jax.make_mesh(shape, names, axis_types=(axis_type,) * len(shape))
        batch = P("data", None) if "data" in names else P(None, None)
        out_spec = P(*batch, None)
        with jax.set_mesh(mesh):
            t = jax.device_put(table, NamedSharding(mesh, P("model", None)))
            i = jax.device_put(ids, NamedSharding(mesh, batch))
            bad = jax.device_put(bad_ids, NamedSharding(mesh, batch))
            g = jax.device_put(gout, NamedSharding(mesh, out_spec))

            def lookup(t, i, **kw):
                return S.vocab_parallel_embedding(
                    i, t, vocab_axis="model", out_sharding=out_spec, **kw
                )

            fwd = jax.jit(lookup)
            res[f"{key}/rows"] = np.asarray(fwd(t, i))
            res[f"{key}/rows_spec_ok"] = np.asarray(
                fwd(t, i).sharding.spec == out_spec
                or (kind == "auto" and tuple(fwd(t, i).sharding.spec) == tuple(batch)[:1])
            )
            res[f"{key}/oob_rows"] = np.asarray(fwd(t, bad))
            # bfloat16: the rows travel as uint32 pairs; still a bit-exact copy.
            t16 = jax.device_put(table.astype(jnp.bfloat16), NamedSharding(mesh, P("model", None)))
            res[f"{key}/rows_bf16_bits"] = np.asarray(fwd(t16, i)).view(np.uint16)

            def loss(t, i, **kw):
                return jnp.sum(lookup(t, i, **kw) * g)

            grad = jax.jit(jax.grad(loss), static_argnames=("padding_idx", "scale_grad_by_freq"))
            res[f"{key}/grad"] = np.asarray(grad(t, i, **rules))
            res[f"{key}/grad_plain"] = np.asarray(grad(t, i))
            res[f"{key}/oob_grad"] = np.asarray(grad(t, bad, **rules))
            res[f"{key}/grad_spec_ok"] = np.asarray(
                tuple(grad(t, i, **rules).sharding.spec)[:1] == ("model",)
            )

            # max_norm: the rows and the table written back, sharded.
            renorm = jax.jit(
                lambda t, i: S.vocab_parallel_embed_and_renorm(
                    i, t, max_norm=MAX_NORM, vocab_axis="model", out_sharding=out_spec, **rules
                )
            )
            rows, new_table = renorm(t, i)
            res[f"{key}/renorm_rows"] = np.asarray(rows)
            res[f"{key}/renorm_table"] = np.asarray(new_table)
            res[f"{key}/renorm_fn_table"] = np.asarray(
                jax.jit(
                    lambda t, i: jaxembed.sharding.vocab_parallel_embedding_renorm(
                        t, i, MAX_NORM, vocab_axis="model"
                    )
                )(t, i)
            )
            try:  # 63 rows (odd) cannot be split over 8, 4 or 2 vocab shards
                S.vocab_parallel_embedding(ids % 63, jnp.asarray(table[:63]), vocab_axis="model")
                res[f"{key}/indivisible_error"] = np.asarray("")
            except ValueError as e:
                res[f"{key}/indivisible_error"] = np.asarray(str(e))
            res[f"{key}/renorm_table_shard_rows"] = np.asarray(
                sorted({s.data.shape[0] for s in new_table.addressable_shards})
            )

            # The compiled lookup: collectives and their shapes.
            res[f"{key}/hlo_fwd"] = np.asarray(
                repr(_collectives(fwd.lower(t, i).compile().as_text()))
            )
            res[f"{key}/hlo_grad"] = np.asarray(
                repr(_collectives(grad.lower(t, i, **rules).compile().as_text()))
            )
            attend = jax.jit(lambda q, t: jaxembed.functional.attend(q, t))
            q = jax.device_put(query, NamedSharding(mesh, out_spec))
            logits = attend(q, t)
            res[f"{key}/logits"] = np.asarray(logits)
            res[f"{key}/logits_spec"] = np.asarray(repr(tuple(logits.sharding.spec)))
            res[f"{key}/hlo_attend"] = np.asarray(
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
            res[f"{key}/nnx_shard_rows"] = np.asarray(
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
            res[f"{key}/nnx_traj"] = np.asarray(model.embedding.get_value())
            res[f"{key}/nnx_traj_shard_rows"] = np.asarray(
                sorted({s.data.shape[0] for s in model.embedding.get_value().addressable_shards})
            )
            logits = nnx.jit(lambda m, q: m.attend(q, out_sharding=P(*batch, "model")))(model, q)
            res[f"{key}/nnx_attend_spec"] = np.asarray(repr(tuple(logits.sharding.spec)))

            # from_pretrained with a table already sharded from the host: it stays V/k rows.
            pre = jaxembed.Embed.from_pretrained(
                jax.device_put(table, NamedSharding(mesh, P("model", None))),
                embedding_metadata={"out_sharding": ("model", None)},
            )
            res[f"{key}/pretrained_rows"] = np.asarray(
                nnx.jit(lambda m, i: m(i, out_sharding=out_spec))(pre, i)
            )
            res[f"{key}/pretrained_shard_rows"] = np.asarray(
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
            res[f"{key}/linen_rows"] = np.asarray(out)
            res[f"{key}/linen_table"] = np.asarray(nn.unbox(new)["params"]["embedding"])
            lgrad = jax.jit(
                jax.grad(lambda v, i: jnp.sum(lin.apply(v, i, out_sharding=out_spec) * g))
            )(variables, i)
            res[f"{key}/linen_grad"] = np.asarray(nn.unbox(lgrad)["params"]["embedding"])

    np.savez(out_path, **res)


if __name__ == "__main__":
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    )
    os.environ["JAX_PLATFORMS"] = "cpu"
    run(sys.argv[1])
