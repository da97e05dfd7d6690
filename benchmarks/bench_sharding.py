"""Smoke benchmark: vocab-parallel (row-sharded) lookup and SGD step on an 8-device CPU mesh.

    PYTHONPATH=$PWD python benchmarks/bench_sharding.py [--v 65536] [--d 128] [--batch 16]
        [--seq 256] [--rounds 7] [--json]

The 8 "devices" are XLA host devices sharing this machine's cores: the figures show the
collectives and the per-device work, not a scaling result (see docs/guides/benchmarks.md,
"Sharded tables"). Benches, each a jitted function, run in interleaved rounds (every
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


# ---------------------------------------------------------------------------------------------
# Scale: dense vs sparse SGD on a row-sharded table as V grows (issue 13)
# ---------------------------------------------------------------------------------------------

GIB = 2**30


def _collective_bytes(compiled_text):
    """Per-device bytes of every collective's result in compiled HLO, by op."""
    import re

    sizes = {"f32": 4, "u32": 4, "s32": 4, "bf16": 2, "u16": 2, "pred": 1, "s8": 1, "u8": 1}
    out = {}
    ops = r"all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute"
    # A result is one shape or, after XLA combines collectives, a tuple of them.
    for result, op in re.findall(r"= (\([^)]*\)|\S+) (" + ops + r")(?:-start)?\(", compiled_text):
        for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", result):
            n = int(np.prod([int(x) for x in dims.split(",") if x])) if dims else 1
            out[op] = out.get(op, 0) + n * sizes.get(dtype, 4)
    return out


def _scale_steps(mesh, v, d, n_ids):
    """Jitted dense and sparse SGD steps (table donated) and their argument shapes."""
    from jaxembed import sparse

    names = mesh.axis_names
    batch = P("data", None) if "data" in names else P(None, None)
    out_spec = P(*batch, None)
    tx = sparse.sgd(LR)
    seq = 128
    ids_shape = (n_ids // seq, seq)

    # A nonlinear loss, as in a model: its gradient needs the looked-up rows, so the lookup
    # (and its all-reduce) is part of the step and runs before the in-place update (with a
    # linear loss XLA drops the lookup, or copies the table to read it while updating it).
    def dense_step(t, i, g):
        def loss(t):
            rows = S.vocab_parallel_embedding(i, t, vocab_axis="model", out_sharding=out_spec)
            return jnp.sum(jnp.tanh(rows) * g)

        value, grad = jax.value_and_grad(loss)(t)
        return t - LR * grad, value

    def sparse_step(t, i, g):
        rows = S.vocab_parallel_embedding(
            i, t, sparse=True, vocab_axis="model", out_sharding=out_spec
        )
        value, rows_grad = jax.value_and_grad(lambda r: jnp.sum(jnp.tanh(r) * g))(rows)
        t, _ = tx.update(sparse.row_gradients(i, rows_grad, v), (), t)
        return t, value

    shapes = (
        jax.ShapeDtypeStruct((v, d), jnp.float32, sharding=NamedSharding(mesh, P("model", None))),
        jax.ShapeDtypeStruct(ids_shape, jnp.int32, sharding=NamedSharding(mesh, batch)),
        jax.ShapeDtypeStruct(ids_shape + (d,), jnp.float32, sharding=NamedSharding(mesh, out_spec)),
    )
    steps = {
        "dense": jax.jit(dense_step, donate_argnums=0),
        "sparse": jax.jit(sparse_step, donate_argnums=0),
    }
    return steps, shapes


def _compiled_facts(mesh, step, shapes):
    with jax.set_mesh(mesh):
        compiled = step.lower(*shapes).compile()
    mem = compiled.memory_analysis()
    # Per device: arguments + outputs + temporaries, less what is updated in place.
    peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes)
    return compiled, peak, _collective_bytes(compiled.as_text())


def _make_table(mesh, v, d):
    """A V x D float32 table made shard by shard on the devices (never whole anywhere: a
    jitted iota with out_shardings computed the whole table on every device, 8x the memory)."""
    rows = v // mesh.shape["model"]

    def local():
        start = jax.lax.axis_index("model") * rows
        r = (jax.lax.broadcasted_iota(jnp.int32, (rows, d), 0) + start) * 7
        r = r + jax.lax.broadcasted_iota(jnp.int32, (rows, d), 1)
        return ((r % 1009).astype(jnp.float32) - 504.0) * 1e-3

    make = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(), out_specs=P("model", None)))
    with jax.set_mesh(mesh):
        return make()


def scale_main(args):
    """Dense vs sparse SGD step on an 8-device vocab-parallel table, V from 1M up."""
    import gc

    mesh = jax.make_mesh((8,), ("model",), axis_types=(AxisType.Explicit,))
    mesh24 = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    d, n = args.d, args.n
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 2**31 - 1, size=(n // 128, 128))
    gout = rng.normal(size=(n // 128, 128, d)).astype(np.float32)
    budget = args.mem_gb * GIB
    print(f"# jax {jax.__version__}, {jax.device_count()} CPU devices, mesh (8,) 'model'; "
          f"D={d} float32, n={n} ids/step, SGD lr={LR}; {args.rounds} interleaved rounds; "
          f"memory budget {args.mem_gb} GiB (whole process, all 8 devices)", flush=True)
    results = []
    base = None  # the tables at the first V, kept alive: every ratio is taken in one run

    def timed(benches):
        for fn in benches.values():
            fn()  # warm up (compiled already)
        samples = {name: [] for name in benches}
        for _ in range(args.rounds):
            for name, fn in benches.items():
                # An untimed call first: a step right after another kind of step runs up to 5x
                # slower on XLA:CPU (measured: the sparse step after the dense one, whose
                # V-sized temporaries it frees), which would charge one bench for another.
                fn()
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
        return {name: statistics.median(xs) for name, xs in samples.items()}

    for v in args.vs:
        row = {"V": v, "D": d, "n": n, "table_bytes_per_device": v // 8 * d * 4}
        steps, shapes = _scale_steps(mesh, v, d, n)
        steps24, shapes24 = _scale_steps(mesh24, v, d, n)
        compiled = {}
        for kind, step in steps.items():
            compiled[kind], peak, coll = _compiled_facts(mesh, step, shapes)
            _, _, coll24 = _compiled_facts(mesh24, steps24[kind], shapes24)
            row[kind] = {"peak_bytes_all_devices": 8 * peak, "collective_bytes_per_device": coll,
                         "collective_bytes_per_device_mesh2x4": coll24}
        with jax.set_mesh(mesh):
            i = jax.device_put(ids % v, NamedSharding(mesh, shapes[1].sharding.spec))
            g = jax.device_put(gout, NamedSharding(mesh, shapes[2].sharding.spec))

        def caller(kind, state, c=compiled, i=i, g=g):
            def call():
                state[kind], loss = c[kind](state[kind], i, g)
                jax.block_until_ready((state[kind], loss))

            return call

        if base is None:  # both steps side by side at the smallest V; their tables kept
            state = {k: _make_table(mesh, v, d) for k in steps}
            base = {"v": v, "calls": {k: caller(k, state) for k in steps},
                    "bytes": sum(row[k]["peak_bytes_all_devices"] for k in steps)}
            med = timed({f"{k} V={v}": c for k, c in base["calls"].items()})
            for k in steps:
                row[k].update(median_s=med[f"{k} V={v}"], ratio_to_base_same_run=1.0)
            row["dense_over_sparse_same_run"] = med[f"dense V={v}"] / med[f"sparse V={v}"]
        else:  # one phase per step kind: its V-row table, next to both base steps
            for kind in steps:
                need = row[kind]["peak_bytes_all_devices"] + base["bytes"]
                if need > budget:
                    row[kind]["skipped"] = (f"needs {need / GIB:.1f} GiB with the V={base['v']} "
                                            f"tables > budget {args.mem_gb} GiB")
                    continue
                state = {kind: _make_table(mesh, v, d)}
                benches = {f"{kind} V={v}": caller(kind, state)}
                benches.update({f"{k} V={base['v']}": c for k, c in base["calls"].items()})
                med = timed(benches)
                row[kind].update(
                    median_s=med[f"{kind} V={v}"],
                    ratio_to_base_same_run=med[f"{kind} V={v}"] / med[f"{kind} V={base['v']}"],
                    base_dense_over_sparse_same_run=(
                        med[f"dense V={base['v']}"] / med[f"sparse V={base['v']}"]),
                )
                del state, benches  # the callers hold the table: free it before the next
                gc.collect()
            if all("ratio_to_base_same_run" in row[k] for k in steps):
                # dense(V)/sparse(V) through the base pair timed in both phases
                row["dense_over_sparse_via_base"] = (
                    row["dense"]["ratio_to_base_same_run"]
                    / row["sparse"]["ratio_to_base_same_run"]
                    * results[0]["dense_over_sparse_same_run"])
        results.append(row)
        print(json.dumps(row), flush=True)
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--v", type=int, default=65536)
    p.add_argument("--d", type=int, default=None, help="128 (smoke), 64 (--scale)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--json", action="store_true", help="one JSON line per result")
    p.add_argument("--scale", action="store_true",
                   help="dense vs sparse SGD step as V grows (--vs, --n, --d 64, --mem-gb)")
    p.add_argument("--vs", type=int, nargs="+",
                   default=[2**20, 2**21, 2**22, 2**23, 2**24, 2**25])
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--mem-gb", type=float, default=11.0)
    p.add_argument("--out", help="--scale: write results.json and scale.png here")
    args = p.parse_args(argv)
    if args.d is None:
        args.d = 64 if args.scale else 128
    if args.scale:
        results = scale_main(args)
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, "results.json"), "w") as f:
                json.dump(results, f, indent=1)
            plot_scale(results, os.path.join(args.out, "scale.png"))
        return

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



def plot_scale(results, path):
    """Step time relative to the smallest V (same run) and per-device table bytes vs V."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for kind, marker in (("dense", "o"), ("sparse", "s")):
        pts = [(r["V"], r[kind]["ratio_to_base_same_run"]) for r in results
               if "ratio_to_base_same_run" in r[kind]]
        if pts:
            a.plot(*zip(*pts), marker=marker, label=f"{kind} SGD step")
    vs = [r["V"] for r in results]
    a.plot(vs, [v / vs[0] for v in vs], ":", color="gray", label="linear in V")
    a.set(xscale="log", yscale="log", xlabel="V (rows)",
          ylabel=f"step time / step time at V={vs[0]:,} (same run)",
          title="8 CPU devices, D=64 f32, n=4096")
    a.legend()
    b.plot(vs, [r["table_bytes_per_device"] / GIB for r in results], marker="o",
           label="table bytes per device")
    for kind in ("dense", "sparse"):
        b.plot(vs, [r[kind]["peak_bytes_all_devices"] / 8 / GIB for r in results], "--",
               label=f"{kind} step peak per device (compiled)")
    b.set(xscale="log", yscale="log", xlabel="V (rows)", ylabel="GiB")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
