"""bf16 max_norm write-back on XLA:CPU: can a formulation avoid the O(V*D) table conversion?

The write-back is a scatter-set of n renormed rows into a donated (V, D) bf16 table. XLA:CPU
float-normalizes a bf16 scatter into float32 (convert the whole table to f32, scatter, convert
back): O(V*D) per call. Candidates, all bit moves (the rows are already rounded to bf16):

* ``bf16``: ``W.at[ids].set(rows)`` (what jaxembed does);
* ``u16``: the same scatter on the table's bits as uint16 (``investigations/u16.py``);
* ``u32``: pairs of bf16 packed into uint32 (``(V, D) -> (V, D/2, 2) -> (V, D/2) u32``), a
  32-bit integer scatter, unpacked again; D must be even;
* ``dus``: a loop of dynamic_update_slice over the n rows (O(n*D) by construction on a
  backend with bf16 updates; timed at V=32k only, see the log).

For each, the compiled HLO is searched for an op over the whole table (a convert or copy of
V x D elements), and the variants are timed side by side (interleaved) at V = 32k and 1M; a
formulation whose cost does not grow with V has about the same time at both. All must produce
the same table bits as ``bf16``.

    python benchmarks/investigations/bf16_writeback.py 4096 64
"""
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxembed._src.tools.bench.timing import run_interleaved

n, D = int(sys.argv[1]), int(sys.argv[2])


def bf16_set(W, i, r):
    return W.at[i].set(r, mode="drop", wrap_negative_indices=False)


def u16_set(W, i, r):
    o = lax.bitcast_convert_type(W, jnp.uint16).at[i].set(
        lax.bitcast_convert_type(r, jnp.uint16), mode="drop", wrap_negative_indices=False)
    return lax.bitcast_convert_type(o, W.dtype)


def _pack(x):
    return lax.bitcast_convert_type(x.reshape(*x.shape[:-1], x.shape[-1] // 2, 2), jnp.uint32)


def _unpack(x, dtype):
    y = lax.bitcast_convert_type(x, dtype)
    return y.reshape(*y.shape[:-2], y.shape[-2] * 2)


def u32_set(W, i, r):
    o = _pack(W).at[i].set(_pack(r), mode="drop", wrap_negative_indices=False)
    return _unpack(o, W.dtype)


def dus_set(W, i, r):
    def body(k, W):
        return lax.dynamic_update_slice_in_dim(W, r[k][None], i[k], axis=0)
    return lax.fori_loop(0, i.shape[0], body, W)


VARIANTS = {"bf16": bf16_set, "u16": u16_set, "u32": u32_set, "dus": dus_set}


def whole_table_ops(hlo: str, V: int) -> list[str]:
    """Ops in the entry/fusions that produce a V-row array other than the scatter itself."""
    out = []
    for line in hlo.splitlines():
        m = re.search(r"= (\w+)\[(\d+),", line)
        if m and int(m.group(2)) == V and re.search(r"\b(convert|copy|wrapped_convert|"
                                                     r"convert_fusion|copy_fusion)", line):
            out.append(line.strip()[:140])
    return out


print(f"jax {jax.__version__} ({jax.default_backend()}), n={n}, D={D}, loadavg "
      f"{open('/proc/loadavg').read().split()[:3]}")
for V in (32768, 1048576):
    rng = np.random.default_rng(0)
    W0 = jnp.asarray(rng.standard_normal((V, D), dtype=np.float32)).astype(jnp.bfloat16)
    ids = jnp.asarray(rng.integers(0, V, n).astype(np.int32))
    rows = jnp.asarray(rng.standard_normal((n, D), dtype=np.float32)).astype(jnp.bfloat16)
    # dus converts the whole table in every one of its n steps (seconds at V=32k): 32k only.
    fs = {k: jax.jit(f, donate_argnums=0) for k, f in VARIANTS.items()
          if k != "dus" or V == 32768}
    want = np.asarray(fs["bf16"](jnp.array(W0, copy=True), ids, rows)).view(np.uint16)
    state = {}
    for k, f in fs.items():
        got = np.asarray(f(jnp.array(W0, copy=True), ids, rows)).view(np.uint16)
        assert np.array_equal(got, want), k
        ops = whole_table_ops(f.lower(jnp.array(W0, copy=True), ids, rows).compile().as_text(), V)
        print(f"V={V} {k:5s} whole-table converts/copies in the compiled HLO: {len(ops)}"
              + "".join(f"\n      {o}" for o in ops[:3]))
        state[k] = jnp.array(W0, copy=True)

    def bench(k):
        def call():
            state[k] = fs[k](state[k], ids, rows)
            state[k].block_until_ready()
        return call

    res = run_interleaved({k: bench(k) for k in fs}, reps=9, target_s=0.02)
    for k, v in res.items():
        print(f"V={V} D={D} n={n} {k:5s} {v['median'] * 1e3:9.3f} ms  IQR {v['rel_iqr'] * 100:4.0f}%"
              f"  / bf16 {v['median'] / res['bf16']['median']:.2f}")
print(f"loadavg at end {open('/proc/loadavg').read().split()[:3]}")
