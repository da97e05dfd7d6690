"""jaxembed.functional.embedding_bag against torch's F.embedding_bag, forward, on CPU.

Standalone: ``PYTHONPATH=. python benchmarks/bench_bag.py [--rounds 11] [--quick]``.

For stable CPU numbers run it as performance.md recommends (jemalloc keeps freed pages, so no
first-touch faults on every output buffer; PASSIVE stops libgomp workers spinning on a core
after each torch op)::

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 \\
    MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1 OMP_WAIT_POLICY=PASSIVE \\
    PYTHONPATH=. python benchmarks/bench_bag.py

Each configuration runs torch and jaxembed side by side in interleaved rounds (each round calls
both, so machine drift hits both alike); a sample is the mean over an inner loop calibrated to
about 20 ms; the table shows the medians and the ratio jaxembed / torch (< 1: jaxembed faster),
and the ratio of the fastest samples (on a shared machine the least disturbed ones).
Both run the same bags on the same table: float32, ids uniform in [0, V), 1-D input with random
bag lengths (offsets) or 2-D input (fixed length). The outputs are checked equal first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from jaxembed import functional as F

# (V, D, bags, mean bag length)
CONFIGS = [
    (10_000, 64, 256, 20),
    (50_000, 128, 2048, 32),
    (50_000, 768, 512, 8),
    (1_000_000, 128, 4096, 16),
]


def _make(v, d, bags, length, layout, seed=0):
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(v, d)).astype(np.float32)
    if layout == "2d":
        return table, rng.integers(0, v, size=(bags, length)), None
    sizes = rng.integers(0, 2 * length + 1, size=bags)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return table, rng.integers(0, v, size=int(sizes.sum())), offsets


def _calibrate(fn, target_s):
    fn()
    t0 = time.perf_counter()
    fn()
    once = time.perf_counter() - t0
    return max(1, min(500, int(target_s / max(once, 1e-7))))


def _interleaved(benches, rounds, target_s=0.02):
    inner = {k: _calibrate(f, target_s) for k, f in benches.items()}
    times = {k: [] for k in benches}
    for _ in range(rounds):
        for k, f in benches.items():
            t0 = time.perf_counter()
            for _ in range(inner[k]):
                f()
            times[k].append((time.perf_counter() - t0) / inner[k])
    return {k: (statistics.median(v), min(v)) for k, v in times.items()}


def bench(v, d, bags, length, layout, mode, rounds):
    table, ids, offsets = _make(v, d, bags, length, layout)
    t_table = torch.from_numpy(table)
    t_ids = torch.from_numpy(ids)
    t_offsets = None if offsets is None else torch.from_numpy(offsets)
    j_table = jnp.asarray(table)
    j_ids = jnp.asarray(ids, jnp.int32)
    j_offsets = None if offsets is None else jnp.asarray(offsets, jnp.int32)
    f = jax.jit(lambda w, i, o: F.embedding_bag(i, w, o, mode=mode))

    def run_torch():
        return torch.nn.functional.embedding_bag(t_ids, t_table, t_offsets, mode=mode)

    def run_jax():
        return f(j_table, j_ids, j_offsets).block_until_ready()

    want, got = run_torch().numpy(), np.asarray(run_jax())
    assert np.allclose(want, got, rtol=1e-5, atol=1e-5), np.abs(want - got).max()
    med = _interleaved({"torch": run_torch, "jaxembed": run_jax}, rounds)
    return med["torch"], med["jaxembed"], ids.size


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--quick", action="store_true", help="the first two sizes only")
    args = parser.parse_args(argv)
    print(
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), jax {jax.__version__} "
        f"({jax.default_backend()}), LD_PRELOAD={os.environ.get('LD_PRELOAD', '')!r}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, rounds={args.rounds}"
    )
    print("| V | D | bags | ids | layout | mode | torch ms | jaxembed ms | ratio | ratio of mins |")
    print("|---:|---:|---:|---:|---|---|---:|---:|---:|---:|")
    for v, d, bags, length in CONFIGS[: 2 if args.quick else None]:
        for layout in ("1d", "2d"):
            for mode in ("sum", "mean"):
                (t, t_min), (j, j_min), n = bench(v, d, bags, length, layout, mode, args.rounds)
                print(
                    f"| {v} | {d} | {bags} | {n} | {layout} | {mode} | {t * 1e3:.3f} | "
                    f"{j * 1e3:.3f} | {j / t:.2f} | {j_min / t_min:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
