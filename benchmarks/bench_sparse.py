"""One embedding training step, row-sparse vs dense, jaxembed vs torch ``sparse=True``.

A step is: look up ``n`` ids (padding_idx=0), a loss linear in the rows (``sum(rows * gout)``,
standing in for the rest of the model), the table's gradient, the optimizer update.

* jax sparse: ``jaxembed.functional.embedding(sparse=True)`` + ``jaxembed.sparse.row_gradients``
  + a ``jaxembed.sparse`` optimizer, under ``jax.jit(donate_argnums=...)``;
* jax dense: ``jax.grad`` w.r.t. the table (a V x D scatter-add) + ``optax.sgd``, donated;
* torch sparse: ``nn.Embedding(sparse=True)`` forward, backward, ``optim.SGD`` /
  ``optim.SparseAdam`` / ``optim.Adagrad`` step.

Times are medians of calibrated samples, with the benches of one configuration interleaved
round by round. Memory is the compiled executable's ``memory_analysis()``: temporaries (the
issue's "no V x D temporary": temp < V*D*4) and peak = arguments + outputs - aliased + temp.

Each (V, optimizer) runs in its own process (clean memory), with jemalloc and ``OMP_WAIT_POLICY=PASSIVE``
when available (``reference/performance.md`` section 3.1: glibc's first-touch faults and
libgomp's spinning skew CPU timings more than the frameworks do). Phases that would not fit in
the available memory (``MemAvailable``) are skipped and reported as such.

Usage::

    PYTHONPATH=. python benchmarks/bench_sparse.py            # V in 100k, 1M, 10M
    PYTHONPATH=. python benchmarks/bench_sparse.py --v 100000 1000000 --json out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time

D, N, LR, PAD = 128, 4096, 1e-3, 0
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


def _bench(benches: dict, reps: int, target_s: float = 0.05) -> dict:
    """Median per-call seconds. ``benches``: name -> fn (fn waits for its result). Rounds are
    interleaved so that machine drift hits every bench alike; each sample averages an inner loop
    calibrated to ``target_s``."""
    inner = {}
    for name, fn in benches.items():
        fn()  # compile / warm up
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        inner[name] = max(1, min(200, int(target_s / max(dt, 1e-7))))
    samples = {k: [] for k in benches}
    for _ in range(reps):
        for name, fn in benches.items():
            t0 = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            samples[name].append((time.perf_counter() - t0) / inner[name])
    return {k: statistics.median(v) for k, v in samples.items()}


def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


def _memory(compiled) -> dict:
    m = compiled.memory_analysis()
    return dict(
        temp=m.temp_size_in_bytes,
        peak=m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
        + m.temp_size_in_bytes,
        alias=m.alias_size_in_bytes,
    )


# ---------------------------------------------------------------------------------------------
# One V (runs in a child process)
# ---------------------------------------------------------------------------------------------


PHASES = ("sgd", "sparse_adam", "adagrad", "dense")


def run_one(V: int, phase: str, reps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import torch

    import jaxembed.functional as F
    from jaxembed import sparse

    torch.set_num_threads(os.cpu_count() or 1)
    table_bytes = V * D * 4
    rng = np.random.default_rng(0)
    ids_np = rng.integers(0, V, N).astype(np.int32)
    gout_np = rng.standard_normal((N, D), dtype=np.float32)
    ids, gout = jnp.asarray(ids_np), jnp.asarray(gout_np)
    res = dict(V=V, D=D, n=N, table_bytes=table_bytes, unique=int(np.unique(ids_np).size))
    skipped = []

    def fits(extra_tables: float) -> bool:
        return _mem_available() > extra_tables * table_bytes + (1 << 30)

    def sparse_step(tx):
        def step(table, state, ids, gout):
            rows = F.embedding(ids, table, padding_idx=PAD, sparse=True)
            rows_grad = jax.grad(lambda r: jnp.sum(r * gout))(rows)
            return tx.update(sparse.row_gradients(ids, rows_grad, V, PAD), state, table)

        return jax.jit(step, donate_argnums=(0, 1))

    def dense_step(tx):
        def step(table, state, ids, gout):
            def loss(t):
                return jnp.sum(F.embedding(ids, t, padding_idx=PAD) * gout)

            grad = jax.grad(loss)(table)
            updates, state = tx.update(grad, state, table)
            return optax.apply_updates(table, updates), state

        return jax.jit(step, donate_argnums=(0, 1))

    def loop(step, table, state):
        box = [table, state]

        def fn():
            box[0], box[1] = step(box[0], box[1], ids, gout)
            jax.block_until_ready(box[0])

        return fn, box

    def torch_sparse(make_opt):
        emb = torch.nn.Embedding(V, D, padding_idx=PAD, sparse=True, _weight=torch.full((V, D), 0.5))
        opt = make_opt(emb.parameters())
        tids, tg = torch.from_numpy(ids_np.astype(np.int64)), torch.from_numpy(gout_np)

        def fn():
            opt.zero_grad(set_to_none=True)
            emb(tids).backward(tg)
            opt.step()

        return fn, emb

    optimizers = [
        ("sgd", sparse.sgd(LR), lambda p: torch.optim.SGD(p, lr=LR), 1),
        ("sparse_adam", sparse.sparse_adam(LR), lambda p: torch.optim.SparseAdam(p, lr=LR), 3),
        ("adagrad", sparse.adagrad(LR), lambda p: torch.optim.Adagrad(p, lr=LR), 2),
    ]
    # Values do not matter for timing; a random normal draw would need a second V x D buffer.
    new_table = jax.jit(lambda key: jnp.full((V, D), 0.5, jnp.float32))
    for name, tx, make_torch, tables in optimizers:
        if name != phase:
            continue
        # jax table(s) + torch table(s) side by side; jax alone when both do not fit.
        with_torch = fits(2 * tables + 0.5)
        if not with_torch and not fits(tables + 0.5):
            skipped.append(f"{name}: the sparse step needs ~{tables} x V*D*4 bytes")
            continue
        if not with_torch:
            skipped.append(f"torch {name}: jax and torch side by side need ~{2 * tables} x V*D*4")
        table = new_table(jax.random.key(0))
        state = tx.init(table)
        step = sparse_step(tx)
        res[f"jax_sparse_{name}_mem"] = _memory(step.lower(table, state, ids, gout).compile())
        jfn, box = loop(step, table, state)
        del table, state
        benches = {"jax": jfn}
        if with_torch and not fits(tables + 0.5):  # memory taken by others meanwhile
            with_torch = False
            skipped.append(f"torch {name}: no memory left beside the jax step")
        if with_torch:
            benches["torch"], emb = torch_sparse(make_torch)
        times = _bench(benches, reps)
        res[f"jax_sparse_{name}_s"] = times["jax"]
        if with_torch:
            res[f"torch_sparse_{name}_s"] = times["torch"]
            del emb
        del jfn, box, benches
        gc.collect()

    # Dense SGD: table + its V x D gradient (+ the update, fused in place when donated).
    if phase != "dense":
        pass
    elif fits(2.5):
        tx = optax.sgd(LR)
        table = new_table(jax.random.key(0))
        state = tx.init(table)
        step = dense_step(tx)
        res["jax_dense_sgd_mem"] = _memory(step.lower(table, state, ids, gout).compile())
        jfn, box = loop(step, table, state)
        del table, state
        res["jax_dense_sgd_s"] = _bench({"jax": jfn}, max(3, reps // 2))["jax"]
        del jfn, box
        gc.collect()
    else:
        skipped.append("dense sgd: table + dense gradient (~2.5 x V*D*4 bytes) do not fit")
    res["skipped"] = skipped
    res["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return res


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def _child_env() -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if os.path.exists(JEMALLOC) and "LD_PRELOAD" not in env:
        env["LD_PRELOAD"] = JEMALLOC
        env.setdefault("MALLOC_CONF", "dirty_decay_ms:-1,muzzy_decay_ms:-1")
    return env


def _fmt_ms(s):
    return "-" if s is None else f"{s * 1e3:9.3f}"


def _fmt_mb(b):
    return "-" if b is None else f"{b / 2**20:9.1f}"


def report(results: list[dict]) -> list[str]:
    lines = [
        f"D={D}, n={N}, float32, padding_idx={PAD}; times are median ms per step",
        "",
        "|        V | optimizer   | jax sparse | torch sparse | jax/torch | jax dense | "
        "dense/sparse | sparse temp MB | sparse peak MB | dense temp MB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for name in ("sgd", "sparse_adam", "adagrad"):
            js, ts = r.get(f"jax_sparse_{name}_s"), r.get(f"torch_sparse_{name}_s")
            if js is None:
                continue
            dense = r.get("jax_dense_sgd_s") if name == "sgd" else None
            mem = r.get(f"jax_sparse_{name}_mem", {})
            dmem = r.get("jax_dense_sgd_mem", {}) if name == "sgd" else {}
            lines.append(
                f"| {r['V']:>8} | {name:<11} | {_fmt_ms(js)} | {_fmt_ms(ts)} | "
                f"{'-' if ts is None else f'{js / ts:9.3f}'} | {_fmt_ms(dense)} | "
                f"{'-' if dense is None else f'{dense / js:9.1f}'} | {_fmt_mb(mem.get('temp'))} | "
                f"{_fmt_mb(mem.get('peak'))} | {_fmt_mb(dmem.get('temp'))} |"
            )
        for s in r["skipped"]:
            lines.append(f"  V={r.get('V')}: skipped {s}")
    return lines


def check_targets(results: list[dict]) -> list[tuple[str, bool, str]]:
    by_v = {r["V"]: r for r in results}
    out = []
    r = by_v.get(1_000_000)
    if r and "jax_dense_sgd_s" in r and "jax_sparse_sgd_s" in r:
        ratio = r["jax_dense_sgd_s"] / r["jax_sparse_sgd_s"]
        out.append(("V=1M sparse >= 150x faster than dense", ratio >= 150, f"{ratio:.0f}x"))
    if r and "torch_sparse_sgd_s" in r:
        ratio = r["jax_sparse_sgd_s"] / r["torch_sparse_sgd_s"]
        out.append(("V=1M sparse <= 0.5x torch sparse (SGD)", ratio <= 0.5, f"{ratio:.3f}x"))
    lo, hi = by_v.get(100_000), by_v.get(10_000_000)
    if lo and hi and "jax_sparse_sgd_s" in lo and "jax_sparse_sgd_s" in hi:
        growth = hi["jax_sparse_sgd_s"] / lo["jax_sparse_sgd_s"]
        out.append(("sparse step grows <= 2x from V=100k to 10M", growth <= 2, f"{growth:.2f}x"))
    temps = [
        (r["V"], k, m["temp"])
        for r in results
        for k, m in r.items()
        if k.startswith("jax_sparse") and k.endswith("_mem")
    ]
    worst = max((t / (v * D * 4), v, k) for v, k, t in temps) if temps else None
    if worst:
        out.append(
            ("no V x D temporary in any sparse step", worst[0] < 1,
             f"largest temp = {worst[0]:.2e} x V*D*4 ({worst[2]}, V={worst[1]})")
        )
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--v", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--json", help="write the raw results here")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child process: one V
    p.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args.phase, args.reps)))
        return 0
    results = []
    for V in args.v:
        merged = {"V": V, "skipped": []}
        for phase in PHASES:  # one process per phase: memory is returned between phases
            cmd = [sys.executable, os.path.abspath(__file__), "--one", str(V), "--phase", phase,
                   "--reps", str(args.reps)]
            proc = subprocess.run(cmd, env=_child_env(), capture_output=True, text=True)
            if proc.returncode != 0:
                merged["skipped"].append(f"{phase}: process failed ({proc.returncode}) "
                                         f"{proc.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            merged["skipped"] += r.pop("skipped")
            merged[f"max_rss_{phase}_bytes"] = r.pop("max_rss_bytes")
            merged.update(r)
        results.append(merged)
        print("\n".join(report(results[-1:])[4:]), flush=True)
    env = _child_env()
    print()
    print(f"settings: LD_PRELOAD={env.get('LD_PRELOAD')} OMP_WAIT_POLICY={env.get('OMP_WAIT_POLICY')}")
    print("\n".join(report(results)))
    print()
    ok = True
    for name, passed, value in check_targets(results):
        ok &= passed
        print(f"[{'PASS' if passed else 'FAIL'}] {name}: {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
