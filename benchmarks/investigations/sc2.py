import sys, numpy as np, jax, jax.numpy as jnp
from jaxembed._src.tools.bench.timing import run_interleaved
V,D,n=[int(x) for x in sys.argv[1:4]]; dt=jnp.bfloat16 if sys.argv[4]=="bf16" else jnp.float32
rng=np.random.default_rng(0)
W=jnp.asarray(rng.standard_normal((V,D),dtype=np.float32)).astype(dt)
ids=jnp.asarray(rng.integers(0,V,n).astype(np.int32)); rows=W[ids]
plain=jax.jit(lambda W,i: W.at[i].get(mode="fill", fill_value=None, wrap_negative_indices=False))
s_norm=jax.jit(lambda W,i,r: W.at[i].set(r,mode="drop",wrap_negative_indices=False),donate_argnums=0)
s_drop_all=jax.jit(lambda W,i,r: W.at[i+V].set(r,mode="drop",wrap_negative_indices=False),donate_argnums=0)
s_uflag=jax.jit(lambda W,i,r: W.at[i].set(r,mode="drop",unique_indices=True,wrap_negative_indices=False),donate_argnums=0)
def uniq(W,i,r):
    u=jnp.unique(i,size=i.shape[0],fill_value=V)
    return W.at[u].set(W.at[u].get(mode="fill",fill_value=0)*1.0,mode="drop",unique_indices=True,indices_are_sorted=True)
s_uniq=jax.jit(uniq,donate_argnums=0)
h={k:jnp.array(W,copy=True) for k in ("a","b","c","d")}
def mk(k,f):
    def g():
        h[k]=f(h[k],ids,rows); h[k].block_until_ready()
    return g
res=run_interleaved({"gather":lambda: plain(W,ids).block_until_ready(),"scatter":mk("a",s_norm),"scatter_all_dropped":mk("b",s_drop_all),"scatter_unique_flag":mk("c",s_uflag),"unique+scatter":mk("d",s_uniq)},reps=7,target_s=0.03)
for k,v in res.items(): print(f"V={V} D={D} n={n} {sys.argv[4]} {k:20s} {v['median']*1e3:9.3f} ms IQR {v['rel_iqr']*100:4.0f}%  /gather {v['median']/res['gather']['median']:.2f}")
