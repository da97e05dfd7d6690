"""Smoke benchmark: vocab-parallel (row-sharded) lookup and SGD step on an 8-device CPU mesh.

    PYTHONPATH=$PWD python benchmarks/bench_sharding.py [--v 65536] [--d 128] [--batch 16]
        [--seq 256] [--rounds 7] [--json]

The 8 "devices" are XLA host devices sharing this machine's cores: the figures show the
collectives and the per-device work, not a scaling result (see README, "Sharded
(vocab-parallel) tables"). Benches, each a jitted function, run in interleaved rounds (every
bench once per round, so drift hits all alike); each sample is the mean over an inner loop of at
least 50 ms after 3 warm-up calls; the median over rounds is reported.

* ``one-device``: ``jaxembed.functional.embedding`` with the whole table on device 0.
* ``shard_map``: ``jaxembed``'s vocab-parallel lookup (masked local gather + one all-reduce).
* ``gspmd``: the alternative, ``table.at[ids].get(out_sharding=...)`` partitioned by GSPMD.
* ``step``: forward, backward (padding_idx, scale_grad_by_freq) and an SGD update of the table
  (donated), for one device and for shard_map; the gspmd step is the plain gather's gradient
  (no padding_idx or scale_grad_by_freq: GSPMD has no place for jaxembed's rules).
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

from jaxembed import functional as F  # noqa: E402
from jaxembed._src.core import sharding as S  # noqa: E402

LR = 1e-3


def _sample(fn, min_s=0.05):
    """Mean seconds per call over an inner loop of at least ``min_s``.

    Each call is waited for: XLA:CPU runs the 8 host devices' collectives on one thread pool,
    and several 8-device programs in flight at once can deadlock its rendezvous (observed with
    small shapes: "Expected 8 threads to join the rendezvous, but only 7 ...").
    """
    n, t = 1, 0.0
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            jax.block_until_ready(fn())
        t = time.perf_counter() - t0
        if t >= min_s:
            return t / n
        n *= 2


def _benches(mesh_shape, names, table, ids, gout):
    mesh = jax.make_mesh(mesh_shape, names, axis_types=(AxisType.Explicit,) * len(names))
    batch = P("data", None) if "data" in names else P(None, None)
    out_spec = P(*batch, None)
    dev0 = jax.devices()[0]
    rules = dict(padding_idx=0, scale_grad_by_freq=True)

    t1 = jax.device_put(table, dev0)
    i1 = jax.device_put(ids, dev0)
    g1 = jax.device_put(gout, dev0)
    one_lookup = jax.jit(lambda t, i: F.embedding(i, t))

    def one_step(t, i, g):
        grad = jax.grad(lambda t: jnp.sum(F.embedding(i, t, **rules) * g))(t)
        return t - LR * grad

    one_step = jax.jit(one_step, donate_argnums=0)

    with jax.set_mesh(mesh):
        ts = jax.device_put(table, NamedSharding(mesh, P("model", None)))
        is_ = jax.device_put(ids, NamedSharding(mesh, batch))
        gs = jax.device_put(gout, NamedSharding(mesh, out_spec))

        def sm_lookup(t, i):
            return S.vocab_parallel_embedding(i, t, vocab_axis="model", out_sharding=out_spec)

        def gspmd_lookup(t, i):
            return t.at[i].get(mode="fill", fill_value=None, out_sharding=out_spec)

        def sm_step(t, i, g, rules=rules):
            def loss(t):
                rows = S.vocab_parallel_embedding(
                    i, t, vocab_axis="model", out_sharding=out_spec, **rules
                )
                return jnp.sum(rows * g)

            return t - LR * jax.grad(loss)(t)

        sm_plain_step = jax.jit(functools.partial(sm_step, rules={}), donate_argnums=0)

        def gspmd_step(t, i, g):  # plain gather gradient: no padding_idx / scale_grad_by_freq
            return t - LR * jax.grad(lambda t: jnp.sum(gspmd_lookup(t, i) * g))(t)

        sm_lookup = jax.jit(sm_lookup)
        gspmd_lookup = jax.jit(gspmd_lookup)
        sm_step = jax.jit(sm_step, donate_argnums=0)
        gspmd_step = jax.jit(gspmd_step, donate_argnums=0)

    def stepper(step, table_copy, *args, sharded=True):
        """Calls a step that donates its table, feeding each call the previous result."""
        state = [table_copy]  # the step donates its table: it gets its own copy

        def call():
            with jax.set_mesh(mesh) if sharded else contextlib.nullcontext():
                state[0] = step(state[0], *args)
            return state[0]

        return call

    def sharded_copy():
        return jax.device_put(table, NamedSharding(mesh, P("model", None)))

    def in_mesh(f, *args):
        def call():
            with jax.set_mesh(mesh):
                return f(*args)

        return call

    return mesh, {
        "lookup one-device": lambda: one_lookup(t1, i1),
        "lookup shard_map": in_mesh(sm_lookup, ts, is_),
        "lookup gspmd": in_mesh(gspmd_lookup, ts, is_),
        "step one-device": stepper(one_step, jax.device_put(table, dev0), i1, g1, sharded=False),
        "step shard_map": stepper(sm_step, sharded_copy(), is_, gs),
        "step shard_map (no rules)": stepper(sm_plain_step, sharded_copy(), is_, gs),
        "step gspmd (no rules)": stepper(gspmd_step, sharded_copy(), is_, gs),
    }, ts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--v", type=int, default=65536)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--json", action="store_true", help="one JSON line per result")
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    table = rng.normal(size=(args.v, args.d)).astype(np.float32)
    ids = rng.integers(0, args.v, size=(args.batch, args.seq)).astype(np.int32)
    gout = rng.normal(size=(args.batch, args.seq, args.d)).astype(np.float32)
    print(
        f"# jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} devices; "
        f"V={args.v} D={args.d} ids={args.batch}x{args.seq} float32; median of "
        f"{args.rounds} rounds, ms"
    )
    for mesh_shape, names in [((8,), ("model",)), ((2, 4), ("data", "model"))]:
        mesh, benches, ts = _benches(mesh_shape, names, table, ids, gout)
        for fn in benches.values():  # compile and warm up
            for _ in range(3):
                jax.block_until_ready(fn())
        samples = {name: [] for name in benches}
        for _ in range(args.rounds):
            for name, fn in benches.items():
                samples[name].append(_sample(fn))
        rows_per_device = {s.data.shape[0] for s in ts.addressable_shards}
        mesh_name = "x".join(map(str, mesh_shape)) + " " + ",".join(names)
        print(f"\nmesh {mesh_name}: table rows per device {sorted(rows_per_device)} of {args.v}")
        for name, xs in samples.items():
            med = statistics.median(xs) * 1e3
            if args.json:
                print(json.dumps({"mesh": mesh_name, "bench": name, "median_ms": med,
                                  "min_ms": min(xs) * 1e3, "V": args.v, "D": args.d,
                                  "n": args.batch * args.seq}))
            else:
                print(f"  {name:26s} {med:9.3f}  (min {min(xs) * 1e3:.3f})")


if __name__ == "__main__":
    main()
