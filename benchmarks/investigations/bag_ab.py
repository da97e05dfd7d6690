"""A/B: EmbeddingBag before/after (BEFORE=path to an old embedding_bag.py) against torch, CPU.

Every (shape, layout, mode, op) group times torch, the old and the new jaxembed side by side in
interleaved rounds (random order per round) and prints each one's median and its ratio to torch.
The outputs (and, for fwdbwd, the table gradients) are checked against torch first: the forward
bit-exact for float32 (as the parity suite requires; per_sample_weights within 1e-5
relative: torch uses fused multiply-adds), gradients within 1e-5 relative.

    BEFORE=/tmp/embedding_bag_before.py python benchmarks/investigations/bag_ab.py [--quick]
        [--configs 0,1,2,3] [--layouts 1d,2d] [--modes sum,mean,max,psw] [--ops fwd,fwdbwd]
        [--reps 9]
Without BEFORE only torch and the current tree are timed. ``VARIANTS=a=/path/a.py,b=/path/b.py``
adds further versions of the module to every group.
"""
import argparse
import importlib.util
import os
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch

from jaxembed._src.core import embedding_bag as NEW
from jaxembed._src.tools.bench.timing import run_interleaved

# (V, D, bags, mean bag length): the grid of bench_bag.py / docs/guides/benchmarks.md.
CONFIGS = [(10_000, 64, 256, 20), (50_000, 128, 2048, 32), (50_000, 768, 512, 8),
           (1_000_000, 128, 4096, 16)]


def load(name, path):
    spec = importlib.util.spec_from_file_location(f"embedding_bag_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def variants():
    """name -> module: ``old`` (BEFORE), further ``VARIANTS=name=path,...``, then ``new``."""
    mods = {}
    if os.environ.get("BEFORE"):
        mods["old"] = load("old", os.environ["BEFORE"])
    for item in filter(None, os.environ.get("VARIANTS", "").split(",")):
        name, path = item.split("=", 1)
        mods[name] = load(name, path)
    mods["new"] = NEW
    return mods


def make(v, d, bags, length, layout, seed=0):
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(v, d)).astype(np.float32)
    if layout == "2d":
        ids = rng.integers(0, v, size=(bags, length))
        offsets = None
    else:
        sizes = rng.integers(0, 2 * length + 1, size=bags)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        ids = rng.integers(0, v, size=int(sizes.sum()))
    psw = rng.normal(size=ids.shape).astype(np.float32)
    g = rng.normal(size=(bags, d)).astype(np.float32)
    return table, ids, offsets, psw, g


def jax_fn(mod, mode, op):
    kw = dict(mode="sum" if mode == "psw" else mode)

    def fwd(w, i, o, p):
        return mod.embedding_bag(i, w, o, per_sample_weights=p if mode == "psw" else None, **kw)

    if op == "fwd":
        return jax.jit(fwd)

    def fwdbwd(w, i, o, p, g):
        y, vjp = jax.vjp(lambda w: fwd(w, i, o, p), w)
        return y, vjp(g)[0]
    return jax.jit(fwdbwd)


def torch_fn(mode, op, tW, ti, to, tp, tg):
    F = torch.nn.functional
    kw = dict(mode="sum" if mode == "psw" else mode,
              per_sample_weights=tp if mode == "psw" else None)
    if op == "fwd":
        def f():
            with torch.no_grad():
                return F.embedding_bag(ti, tW, to, **kw)
        return f
    w = tW.clone().requires_grad_(True)

    def f():
        w.grad = None
        y = F.embedding_bag(ti, w, to, **kw)
        y.backward(tg)
        return y, w.grad
    return f


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--configs", default="0,1,2,3")
    p.add_argument("--layouts", default="1d,2d")
    p.add_argument("--modes", default="sum,mean,max,psw")
    p.add_argument("--ops", default="fwd,fwdbwd")
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--target-ms", type=float, default=20)
    args = p.parse_args()
    mods = variants()
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), jax {jax.__version__}, "
          f"LD_PRELOAD={os.environ.get('LD_PRELOAD')!r}, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY')}, loadavg {open('/proc/loadavg').read().split()[:3]}")
    ratios = {}
    for c in [int(x) for x in args.configs.split(",")]:
        v, d, bags, length = CONFIGS[c]
        for layout in args.layouts.split(","):
            table, ids, offsets, psw, g = make(v, d, bags, length, layout)
            tW, ti = torch.from_numpy(table), torch.from_numpy(ids)
            to = None if offsets is None else torch.from_numpy(offsets)
            tp, tg = torch.from_numpy(psw), torch.from_numpy(g)
            jW, ji = jnp.asarray(table), jnp.asarray(ids, jnp.int32)
            jo = None if offsets is None else jnp.asarray(offsets, jnp.int32)
            jp, jg = jnp.asarray(psw), jnp.asarray(g)
            for mode in args.modes.split(","):
                for op in args.ops.split(","):
                    benches = {"torch": torch_fn(mode, op, tW, ti, to, tp, tg)}
                    want = benches["torch"]()
                    want = [x.detach().numpy() for x in (want if op == "fwdbwd" else (want,))]
                    for name, mod in mods.items():
                        f = jax_fn(mod, mode, op)
                        a = (jW, ji, jo, jp) + ((jg,) if op == "fwdbwd" else ())
                        got = f(*a)
                        got = [np.asarray(x) for x in (got if op == "fwdbwd" else (got,))]
                        if mode == "psw":  # torch: fma(psw, row, acc); we round psw * row
                            err = np.abs(got[0] - want[0]).max() / max(1.0, np.abs(want[0]).max())
                            assert err < 1e-5, (name, mode, op, "forward", err)
                        else:
                            assert np.array_equal(got[0], want[0]), (name, mode, op, "forward")
                        if op == "fwdbwd":
                            err = np.abs(got[1] - want[1]).max() / max(1.0, np.abs(want[1]).max())
                            assert err < 1e-5, (name, mode, op, err)
                        benches[name] = (lambda f=f, a=a: jax.block_until_ready(f(*a)))
                    res = run_interleaved(benches, reps=args.reps, target_s=args.target_ms / 1e3)
                    t = res["torch"]["median"]
                    cells = []
                    for k, r in res.items():
                        cells.append(f"{k} {r['median'] * 1e3:8.3f} ms ({100 * r['rel_iqr']:3.0f}%)"
                                     + ("" if k == "torch" else f" {r['median'] / t:5.2f}x"))
                        if k != "torch":
                            ratios.setdefault((k, layout, op), []).append(r["median"] / t)
                    print(f"{v:>7} {d:>3} {bags:>4} {length:>2} {layout} {mode:<4} {op:<6} | "
                          + " | ".join(cells), flush=True)
    print("\nmedian ratio to torch over shapes and modes:")
    for (k, layout, op), rs in sorted(ratios.items()):
        print(f"  {k:<6} {layout} {op:<6} median {statistics.median(rs):.2f} "
              f"(range {min(rs):.2f}-{max(rs):.2f}, {len(rs)} groups)")
    print(f"loadavg at end {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
