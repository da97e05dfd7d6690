"""A/B: padding_idx backward before/after _drop_padding, interleaved in one process."""
import os, sys, importlib.util, numpy as np, jax, jax.numpy as jnp
from jaxembed import functional as NEW
from jaxembed._src.tools.bench.timing import run_interleaved
from jaxembed._src.tools.bench import cases
spec = importlib.util.spec_from_file_location("functional_before", os.environ["BEFORE"])
OLD = importlib.util.module_from_spec(spec); sys.modules["functional_before"] = OLD; spec.loader.exec_module(OLD)
V, D, n = [int(x) for x in sys.argv[1:4]]; dt = sys.argv[4]; dist = sys.argv[5]
dtype = jnp.bfloat16 if dt == "bf16" else jnp.float32
rng = np.random.default_rng(0)
W = jnp.asarray(rng.standard_normal((V, D), dtype=np.float32)).astype(dtype)
ids = jnp.asarray(cases.make_ids(dist, V, n, rng).astype(np.int32))
g = jnp.asarray(rng.standard_normal((n, D), dtype=np.float32)).astype(dtype)
def mk(F, **kw):
    def f(W, i, g):
        y, vjp = jax.vjp(lambda W: F.embedding(i, W, **kw), W); return y, vjp(g)[0]
    return jax.jit(f)
fs = {"plain": mk(NEW), "pad_before": mk(OLD, padding_idx=0), "pad_after": mk(NEW, padding_idx=0)}
a = fs["pad_before"](W, ids, g)[1]; b = fs["pad_after"](W, ids, g)[1]
assert bool(jnp.all(a == b)), "gradients differ"
res = run_interleaved({k: (lambda f=f: jax.block_until_ready(f(W, ids, g))) for k, f in fs.items()}, reps=9, target_s=0.03)
for k, v in res.items():
    print(f"V={V} D={D} n={n} {dt} {dist:8s} {k:11s} {v['median']*1e3:9.3f} ms  IQR {v['rel_iqr']*100:5.1f}%  /plain {v['median']/res['plain']['median']:.3f}")
