import sys, numpy as np, jax, jax.numpy as jnp, torch, ml_dtypes
from jaxembed import functional as F
from jaxembed._src.tools.bench.timing import run_interleaved
V,D,n=[int(x) for x in sys.argv[1:4]]
rng=np.random.default_rng(0)
Wn=rng.standard_normal((V,D),dtype=np.float32).astype(ml_dtypes.bfloat16); idn=rng.integers(0,V,n)
gn=rng.standard_normal((n,D),dtype=np.float32).astype(ml_dtypes.bfloat16)
W=jnp.asarray(Wn); ids=jnp.asarray(idn.astype(np.int32)); g=jnp.asarray(gn)
def vjp(W,i,g):
    y,f=jax.vjp(lambda W: F.embedding(i,W),W); return y,f(g)[0]
je=jax.jit(vjp)
acc32=jax.jit(lambda i,g: jnp.zeros((V,D),jnp.float32).at[i].add(g.astype(jnp.float32),mode="drop").astype(jnp.bfloat16))
bf=jax.jit(lambda i,g: jnp.zeros((V,D),jnp.bfloat16).at[i].add(g,mode="drop"))
zeros=jax.jit(lambda: jnp.zeros((V,D),jnp.bfloat16))
Wt=torch.from_numpy(Wn.view(np.int16)).view(torch.bfloat16).requires_grad_(True); idt=torch.from_numpy(idn); gt=torch.from_numpy(gn.view(np.int16)).view(torch.bfloat16)
def tb():
    Wt.grad=None; torch.nn.functional.embedding(idt,Wt).backward(gt)
tb(); tg=Wt.grad.float().numpy()
a32=np.asarray(acc32(ids,g)).astype(np.float32); abf=np.asarray(bf(ids,g)).astype(np.float32)
print("torch == f32-accumulate:", np.array_equal(tg,a32), " torch == bf16-accumulate:", np.array_equal(tg,abf), "mismatch counts", (tg!=a32).sum(), (tg!=abf).sum())
res=run_interleaved({"jaxembed_vjp":lambda: jax.block_until_ready(je(W,ids,g)),"bf16_scatter":lambda: bf(ids,g).block_until_ready(),"f32acc_scatter":lambda: acc32(ids,g).block_until_ready(),"zeros_bf16":lambda: zeros().block_until_ready(),"torch_fwdbwd":tb},reps=7,target_s=0.03)
for k,v in res.items(): print(f"V={V} D={D} n={n} bf16 {k:15s} {v['median']*1e3:8.3f} ms IQR {v['rel_iqr']*100:4.0f}%")
