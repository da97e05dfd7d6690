"""The embedding's cost inside a real training step (``model_step``).

A small text encoder (a token-embedding table of V x D, learned positions, LayerNorm, ``layers``
post-LN transformer blocks as in BERT/MiniLM, mean pooling and a 2-class head) trained one
AdamW step at a time on a fixed batch, in:

* ``jaxembed``: flax.nnx with ``jaxembed.Embed`` as the token embedding,
* ``flax.nnx``: the same model with ``flax.nnx.Embed``,
* ``torch`` and ``torch.compile``: the same model in torch (eager, and ``torch.compile`` of the
  forward and of ``optimizer.step``),

each also without its lookup (``... -lookup``): the same step fed the precomputed token
embeddings, so the table, its gradient and its optimizer state are gone. The embedding's share
of a step is ``1 - (time without lookup) / (time with it)``.

All contenders start from the same weights. Before timing, each one's losses of its first two
steps are checked against the same two steps run by torch in float64 (relative 1e-4: float32
rounding is ~1e-6 here; a wrong lookup, gradient or update moves the second loss by far more).

The model is built by ``jax_model`` / ``torch_model`` from a :class:`ModelConfig` and a table of
numpy weights (``init_weights``), so another encoder (e.g. a MiniLM from ``jaxembed.models``) can
replace it by providing the same three functions.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxembed._src.tools.bench import cases

OP = "model_step"
LR, WEIGHT_DECAY, LN_EPS = 1e-3, 0.01, 1e-12
NO_LOOKUP = " -lookup"  # suffix of the contenders without the lookup


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab: int = 30_522  # BERT/MiniLM's vocabulary: a 30k x 384 table
    dim: int = 384
    heads: int = 12
    ffn: int = 1536
    layers: int = 2
    batch: int = 16
    seq: int = 128
    classes: int = 2

    def label(self) -> str:
        return (
            f"V={self.vocab} D={self.dim} layers={self.layers} heads={self.heads} "
            f"batch={self.batch}x{self.seq} f32"
        )


FULL = ModelConfig()
QUICK = ModelConfig(batch=4, seq=32)


def init_weights(cfg: ModelConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """float32 weights by name; linear weights are (in, out)."""

    def normal(*shape, scale=0.02):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    D, F = cfg.dim, cfg.ffn
    w = {
        "tok": normal(cfg.vocab, D, scale=1.0),
        "pos": normal(cfg.seq, D),
        "ln_g": np.ones(D, np.float32),
        "ln_b": np.zeros(D, np.float32),
        "head_w": normal(D, cfg.classes),
        "head_b": np.zeros(cfg.classes, np.float32),
    }
    for i in range(cfg.layers):
        for name, shape in (("qkv", (D, 3 * D)), ("out", (D, D)), ("ff1", (D, F)), ("ff2", (F, D))):
            w[f"{i}.{name}_w"] = normal(*shape)
            w[f"{i}.{name}_b"] = np.zeros(shape[1], np.float32)
        for ln in ("ln1", "ln2"):
            w[f"{i}.{ln}_g"] = np.ones(D, np.float32)
            w[f"{i}.{ln}_b"] = np.zeros(D, np.float32)
    return w


def make_batch(cfg: ModelConfig, rng: np.random.Generator):
    ids = rng.integers(0, cfg.vocab, size=(cfg.batch, cfg.seq), dtype=np.int64)
    labels = rng.integers(0, cfg.classes, size=cfg.batch, dtype=np.int64)
    return ids, labels


# --- JAX (flax.nnx) ------------------------------------------------------------------------------


def _jax_layer_norm(x, g, b):
    mu = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean(jnp.square(x - mu), -1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + LN_EPS) * g + b


def _jax_encoder(p: dict, x, cfg: ModelConfig):
    """Everything after the token lookup: ``x`` (B, T, D) -> logits (B, classes)."""
    B, T, D = x.shape
    H = cfg.heads
    x = _jax_layer_norm(x + p["pos"][:T], p["ln_g"], p["ln_b"])
    for i in range(cfg.layers):
        qkv = x @ p[f"{i}.qkv_w"] + p[f"{i}.qkv_b"]
        q, k, v = (
            t.reshape(B, T, H, D // H).transpose(0, 2, 1, 3) for t in jnp.split(qkv, 3, axis=-1)
        )
        att = jax.nn.softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(D // H), axis=-1)
        a = (att @ v).transpose(0, 2, 1, 3).reshape(B, T, D)
        x = _jax_layer_norm(
            x + a @ p[f"{i}.out_w"] + p[f"{i}.out_b"], p[f"{i}.ln1_g"], p[f"{i}.ln1_b"]
        )
        h = jax.nn.gelu(x @ p[f"{i}.ff1_w"] + p[f"{i}.ff1_b"], approximate=False)
        x = _jax_layer_norm(
            x + h @ p[f"{i}.ff2_w"] + p[f"{i}.ff2_b"], p[f"{i}.ln2_g"], p[f"{i}.ln2_b"]
        )
    return jnp.mean(x, axis=1) @ p["head_w"] + p["head_b"]


def jax_model(cfg: ModelConfig, weights: dict, embed: str | None):
    """An nnx.Module: ``embed`` is "jaxembed", "flax.nnx" or None (input = the token rows)."""
    from flax import nnx

    import jaxembed

    class Encoder(nnx.Module):
        def __init__(self):
            rest = {k: v for k, v in weights.items() if k != "tok"}
            # Copies: the steps donate and update their parameters in place.
            self.p = nnx.Dict(
                {k.replace(".", "_"): nnx.Param(jnp.array(v, copy=True)) for k, v in rest.items()}
            )
            table: jaxembed.Embed | nnx.Embed | None = None
            if embed == "jaxembed":
                table = jaxembed.Embed.from_pretrained(np.array(weights["tok"]), freeze=False)
            elif embed == "flax.nnx":
                table = nnx.Embed(cfg.vocab, cfg.dim, rngs=nnx.Rngs(0))
                table.embedding.set_value(jnp.array(weights["tok"], copy=True))
            self.embed = nnx.data(table)

        def __call__(self, x):
            if self.embed is not None:
                x = self.embed(x)
            p = {k: self.p[k.replace(".", "_")].get_value() for k in weights if k != "tok"}
            return _jax_encoder(p, x, cfg)

    return Encoder()


def jax_step_bench(cfg: ModelConfig, weights, ids, labels, embed: str | None) -> cases.Bench:
    from flax import nnx

    model = jax_model(cfg, weights, embed)
    opt = nnx.Optimizer(model, optax.adamw(LR, weight_decay=WEIGHT_DECAY), wrt=nnx.Param)
    x = jnp.asarray(ids.astype(np.int32)) if embed else jnp.asarray(weights["tok"][ids])
    y = jnp.asarray(labels.astype(np.int32))

    @nnx.jit(donate_argnums=(0, 1))
    def step(model, opt, x, y):
        def loss_fn(model):
            logits = model(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    def call():
        return float(step(model, opt, x, y))  # float(): blocks until the step is done

    return cases.Bench(call, _not_checked)


# --- torch ---------------------------------------------------------------------------------------


def torch_model(torch, cfg: ModelConfig, weights: dict, lookup: bool, dtype=None):
    nn, F = torch.nn, torch.nn.functional
    dtype = dtype or torch.float32

    def tensor(name):  # a copy: the optimizer updates it in place
        return torch.tensor(weights[name], dtype=dtype)

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = (
                nn.Embedding.from_pretrained(tensor("tok"), freeze=False) if lookup else None
            )
            self.p = nn.ParameterDict(
                {k.replace(".", "_"): nn.Parameter(tensor(k)) for k in weights if k != "tok"}
            )

        def forward(self, x):
            if self.embed is not None:
                x = self.embed(x)
            p = {k: self.p[k.replace(".", "_")] for k in weights if k != "tok"}
            B, T, D = x.shape
            H = cfg.heads

            def ln(x, g, b):
                return F.layer_norm(x, (D,), g, b, LN_EPS)

            x = ln(x + p["pos"][:T], p["ln_g"], p["ln_b"])
            for i in range(cfg.layers):
                qkv = x @ p[f"{i}.qkv_w"] + p[f"{i}.qkv_b"]
                q, k, v = (t.reshape(B, T, H, D // H).transpose(1, 2) for t in qkv.split(D, dim=-1))
                att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // H), dim=-1)
                a = (att @ v).transpose(1, 2).reshape(B, T, D)
                x = ln(x + a @ p[f"{i}.out_w"] + p[f"{i}.out_b"], p[f"{i}.ln1_g"], p[f"{i}.ln1_b"])
                h = F.gelu(x @ p[f"{i}.ff1_w"] + p[f"{i}.ff1_b"])
                x = ln(x + h @ p[f"{i}.ff2_w"] + p[f"{i}.ff2_b"], p[f"{i}.ln2_g"], p[f"{i}.ln2_b"])
            return x.mean(dim=1) @ p["head_w"] + p["head_b"]

    return Encoder()


def torch_step_bench(
    torch, cfg: ModelConfig, weights, ids, labels, lookup: bool, compile_backend: str | None
) -> cases.Bench:
    model = torch_model(torch, cfg, weights, lookup)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    x = torch.from_numpy(ids) if lookup else torch.from_numpy(weights["tok"][ids])
    y = torch.from_numpy(labels)
    forward, opt_step = model, opt.step
    if compile_backend:
        forward = torch.compile(model, backend=compile_backend, dynamic=False)
        opt_step = torch.compile(opt.step, backend=compile_backend, dynamic=False)

    def call():
        loss = torch.nn.functional.cross_entropy(forward(x), y)
        loss.backward()
        opt_step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return cases.Bench(call, _not_checked)


def reference_losses(torch, cfg: ModelConfig, weights, ids, labels, lookup=True) -> list[float]:
    """The losses of the first two AdamW steps, in float64 (torch); ``lookup=False``: the model
    fed the token rows (its table stays fixed)."""
    model = torch_model(torch, cfg, weights, lookup, torch.float64)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    x = torch.from_numpy(ids) if lookup else torch.from_numpy(weights["tok"][ids]).double()
    y = torch.from_numpy(labels)
    out = []
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.append(loss.item())
    return out


def _not_checked(out) -> dict:
    """A step bench's check until :func:`_checked` gives it the reference losses."""
    return dict(ok=False, max_err=None, detail="not checked against a reference")


def _checked(bench: cases.Bench, ref: list[float], rtol: float = 1e-4) -> cases.Bench:
    """The bench whose check runs its second step and compares both losses with ``ref``."""

    def check(first_loss):
        got = [first_loss, bench.call()]
        err = max(abs(g - r) / abs(r) for g, r in zip(got, ref))
        ok = bool(err <= rtol)
        return dict(
            ok=ok,
            max_err=err,
            detail=f"losses {got} vs float64 {ref}: rel. error "
            f"{err:.1e} ({'ok' if ok else f'over {rtol}'})",
        )

    return cases.Bench(bench.call, check)


def benches(
    cfg: ModelConfig, torch, compile_backend: str | None, rng, without_lookup: bool = True
) -> dict:
    """``{contender: Bench}`` for the in-model step, with and (``without_lookup``) without the
    lookup."""
    weights = init_weights(cfg, rng)
    ids, labels = make_batch(cfg, rng)
    ref = reference_losses(torch, cfg, weights, ids, labels) if torch is not None else None
    out = {}
    for name in ("jaxembed", "flax.nnx"):
        out[name] = jax_step_bench(cfg, weights, ids, labels, name)
    if without_lookup:
        out["flax.nnx" + NO_LOOKUP] = jax_step_bench(cfg, weights, ids, labels, None)
    if torch is not None:
        out[cases.TORCH] = torch_step_bench(torch, cfg, weights, ids, labels, True, None)
        if without_lookup:
            out[cases.TORCH + NO_LOOKUP] = torch_step_bench(
                torch, cfg, weights, ids, labels, False, None
            )
        if compile_backend:
            out[cases.TORCH_COMPILE] = torch_step_bench(
                torch, cfg, weights, ids, labels, True, compile_backend
            )
        if compile_backend and without_lookup:
            out[cases.TORCH_COMPILE + NO_LOOKUP] = torch_step_bench(
                torch, cfg, weights, ids, labels, False, compile_backend
            )
    if ref is None:
        return {
            k: cases.Bench(
                b.call, lambda _: dict(ok=True, max_err=None, detail="no torch: unchecked")
            )
            for k, b in out.items()
        }
    # Without the lookup the table stays fixed: checked against its own float64 run.
    ref_fixed = reference_losses(torch, cfg, weights, ids, labels, lookup=False)
    return {k: _checked(b, ref_fixed if k.endswith(NO_LOOKUP) else ref) for k, b in out.items()}
