import sys, numpy as np, jax, jax.numpy as jnp
from jax import lax
from jaxembed._src.tools.bench.timing import run_interleaved
n=int(sys.argv[1]); D=int(sys.argv[2])
def u16set(W,i,r):
    o=lax.bitcast_convert_type(W,jnp.uint16).at[i].set(lax.bitcast_convert_type(r,jnp.uint16),mode="drop",wrap_negative_indices=False)
    return lax.bitcast_convert_type(o,W.dtype)
bfset=lambda W,i,r: W.at[i].set(r,mode="drop",wrap_negative_indices=False)
res={}
for V in (32768, 1048576):
    W=jnp.ones((V,D),jnp.bfloat16); ids=jnp.asarray(np.random.default_rng(0).integers(0,V,n).astype(np.int32)); r=jnp.full((n,D),2,jnp.bfloat16)
    fu=jax.jit(u16set,donate_argnums=0); fb=jax.jit(bfset,donate_argnums=0)
    if V==32768: print("u16 HLO has V-sized convert/copy:", any(('convert' in l or 'copy' in l) and str(V) in l for l in fu.lower(W,ids,r).compile().as_text().splitlines()))
    h={"u":jnp.array(W,copy=True),"b":jnp.array(W,copy=True)}
    o=fu(jnp.array(W,copy=True),ids,r); assert bool(jnp.all(o==fb(jnp.array(W,copy=True),ids,r)))
    def mk(k,f):
        def g():
            h[k]=f(h[k],ids,r); h[k].block_until_ready()
        return g
    rr=run_interleaved({"bf16_set":mk("b",fb),"u16_set":mk("u",fu)},reps=7,target_s=0.02)
    for k,v in rr.items(): print(f"V={V} D={D} n={n} {k:9s} {v['median']*1e3:9.3f} ms IQR {v['rel_iqr']*100:4.0f}%")
