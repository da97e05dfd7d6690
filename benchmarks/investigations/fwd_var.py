import sys, numpy as np, jax, jax.numpy as jnp, torch
from jaxembed import functional as F
from jaxembed._src.tools.bench.timing import run_interleaved
V,D,n=[int(x) for x in sys.argv[1:4]]
rng=np.random.default_rng(0)
Wn=rng.standard_normal((V,D),dtype=np.float32); idn=rng.integers(0,V,n)
W=jax.device_put(Wn); ids=jnp.asarray(idn.astype(np.int32))
Wt=torch.from_numpy(Wn); idt=torch.from_numpy(idn)
je=jax.jit(lambda W,i: F.embedding(i,W))
pib=jax.jit(lambda W,i: W.at[i].get(mode="promise_in_bounds"))
clip=jax.jit(lambda W,i: W.at[i].get(mode="clip"))
take=jax.jit(lambda W,i: jnp.take(W,i,axis=0))
src=rng.standard_normal((n,D),dtype=np.float32); dst=np.empty_like(src); out=np.empty((n,D),np.float32)
b=lambda f: (lambda: f(W,ids).block_until_ready())
res=run_interleaved({"jaxembed":b(je),"pib":b(pib),"clip":b(clip),"flax_take":b(take),
  "torch":lambda: torch.nn.functional.embedding(idt,Wt),"np_take_out":lambda: np.take(Wn,idn,axis=0,out=out,mode="clip"),
  "copy":lambda: np.copyto(dst,src)},reps=9,target_s=0.03)
for k,v in res.items(): print(f"V={V} D={D} n={n} {k:12s} {v['median']*1e3:8.3f} ms IQR {v['rel_iqr']*100:4.0f}%  copy/t {res['copy']['median']/v['median']:.2f}")
