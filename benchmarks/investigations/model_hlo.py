"""The model step's compiled HLO with jaxembed.Embed and with flax.nnx.Embed: what differs.

Same model, optimizer and batch as ``jaxembed bench --ops model_step`` (tools/bench/model.py),
at a given configuration; prints each step's number of HLO instructions and fusions and the
instructions (operation names with their shapes) that appear in one program and not in the
other. A step whose only difference is the lookup's own gather and scatter cannot differ in time
by more than those kernels take.

    python benchmarks/investigations/model_hlo.py batch=16,seq=128
"""
import collections
import dataclasses
import re
import sys

import jax
import numpy as np
import optax
from flax import nnx

from jaxembed._src.tools.bench import model

kw = dict(item.split("=") for item in filter(None, (sys.argv[1] if len(sys.argv) > 1 else "").split(",")))
cfg = dataclasses.replace(model.FULL, **{k: int(v) for k, v in kw.items()})
rng = np.random.default_rng(0)
weights = model.init_weights(cfg, rng)
ids, labels = model.make_batch(cfg, rng)


def hlo(embed):
    m = model.jax_model(cfg, weights, embed)
    opt = nnx.Optimizer(m, optax.adamw(model.LR, weight_decay=model.WEIGHT_DECAY), wrt=nnx.Param)

    def step(m, opt, x, y):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(m)
        opt.update(m, grads)
        return loss

    x = jax.numpy.asarray(ids.astype(np.int32))
    y = jax.numpy.asarray(labels.astype(np.int32))
    return nnx.jit(step, donate_argnums=(0, 1)).lower(m, opt, x, y).compile().as_text()


def ops(text):
    """Multiset of 'opcode shape' over every instruction (names and metadata dropped)."""
    out = collections.Counter()
    for line in text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%\S+ = (\S+) (\w[\w.-]*)\(", line)
        if m:
            out[f"{m.group(2)} {m.group(1)}"] += 1
    return out


a, b = hlo("jaxembed"), hlo("flax.nnx")
oa, ob = ops(a), ops(b)
print(f"{cfg.label()}; jax {jax.__version__}")
for name, o, t in (("jaxembed.Embed", oa, a), ("flax.nnx.Embed", ob, b)):
    print(f"{name}: {sum(o.values())} instructions, {t.count(' fusion(')} fusions")
print("only with jaxembed.Embed:")
for k, v in sorted((oa - ob).items()):
    print(f"  {v} x {k}")
print("only with flax.nnx.Embed:")
for k, v in sorted((ob - oa).items()):
    print(f"  {v} x {k}")
