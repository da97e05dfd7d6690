"""A/B: embed_and_renorm (donated) before/after writing only changed rows; steady state and
worst case (every referenced row exceeds max_norm: a fresh table copy per call, copy untimed)."""
import os, sys, time, statistics, importlib.util, numpy as np, jax, jax.numpy as jnp
from jaxembed import functional as NEW
from jaxembed._src.tools.bench.timing import run_interleaved
spec = importlib.util.spec_from_file_location("fb", os.environ["BEFORE"])
OLD = importlib.util.module_from_spec(spec); sys.modules["fb"] = OLD; spec.loader.exec_module(OLD)
V, D, n = [int(x) for x in sys.argv[1:4]]; dt = sys.argv[4]
dtype = jnp.bfloat16 if dt == "bf16" else jnp.float32
rng = np.random.default_rng(0)
W = jnp.asarray(rng.standard_normal((V, D), dtype=np.float32)).astype(dtype)
ids = jnp.asarray(rng.integers(0, V, n).astype(np.int32))
plain = jax.jit(lambda W, i: NEW.embedding(i, W))
old = jax.jit(lambda W, i: OLD.embed_and_renorm(i, W, max_norm=1.0), donate_argnums=0)
new = jax.jit(lambda W, i: NEW.embed_and_renorm(i, W, max_norm=1.0), donate_argnums=0)
# same results, bit for bit, on a fresh table and on an already renormed one
r1, t1 = old(jnp.array(W, copy=True), ids); r2, t2 = new(jnp.array(W, copy=True), ids)
assert bool(jnp.all(r1 == r2)) and bool(jnp.all(t1 == t2))
r1b, t1b = old(t1, ids); r2b, t2b = new(t2, ids)
assert bool(jnp.all(r1b == r2b)) and bool(jnp.all(t1b == t2b))
h = {"o": jnp.array(W, copy=True), "n": jnp.array(W, copy=True)}
def st(k, f):
    def g():
        r, h[k] = f(h[k], ids); r.block_until_ready()
    return g
res = run_interleaved({"plain": lambda: plain(W, ids).block_until_ready(), "before_steady": st("o", old), "after_steady": st("n", new)}, reps=9, target_s=0.03)
# worst case: fresh copies, interleaved, copy untimed
wc = {"before_all_rows": [], "after_all_rows": [], "plain": []}
for _ in range(25):
    for name, f in (("before_all_rows", old), ("after_all_rows", new), ("plain", None)):
        Wc = jnp.array(W, copy=True).block_until_ready()
        t0 = time.perf_counter()
        if f is None: plain(Wc, ids).block_until_ready()
        else: jax.block_until_ready(f(Wc, ids))
        wc[name].append(time.perf_counter() - t0)
p = res["plain"]["median"]; pw = statistics.median(wc["plain"])
for k, v in res.items(): print(f"V={V} D={D} n={n} {dt} {k:16s} {v['median']*1e3:9.3f} ms IQR {v['rel_iqr']*100:4.0f}%  /plain {v['median']/p:.2f}")
for k in ("before_all_rows", "after_all_rows"):
    m = statistics.median(wc[k]); print(f"V={V} D={D} n={n} {dt} {k:16s} {m*1e3:9.3f} ms            /plain(cold) {m/pw:.2f}  (plain cold {pw*1e3:.3f} ms)")
