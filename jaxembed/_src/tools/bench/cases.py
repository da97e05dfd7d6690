"""What the harness times: contenders, operations, id distributions, bytes models, references.

Every contender runs on the device JAX uses (torch on CUDA when JAX is on a GPU). Before it is
timed, each contender's output is checked against a float64 numpy reference computed from the
same table, ids and output gradient; a contender that fails is reported and not timed.

Operations (the loss is ``sum(lookup(ids) * g)`` for a fixed random ``g``, i.e. a backward with
cotangent ``g``, which is what torch's ``out.backward(g)`` computes):

* ``fwd``: the lookup.
* ``fwdbwd``: lookup and dense gradient w.r.t. the table (V x D).
* ``sgd`` / ``adam``: one full jitted optax step (torch: ``optim.SGD`` / ``optim.Adam``
  defaults), table and optimizer state donated (``donate_argnums``) so the update is in place.
* ``opt_fwd`` / ``opt_fwdbwd``: jaxembed's functional path with one option on, against the plain
  path. ``max_norm`` in ``opt_fwd`` is :func:`jaxembed.functional.embed_and_renorm` with the
  table donated: the lookup plus torch's in-place renorm of the referenced rows.
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax

OPS = ("fwd", "fwdbwd", "sgd", "adam", "opt_fwd", "opt_fwdbwd")
DISTS = ("uniform", "zipf", "padding")
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}

SUBJECT = "jaxembed"  # the functional path; every ratio is SUBJECT's time / the other's
JAX_CONTENDERS = ("jaxembed", "jaxembed.nnx", "jaxembed.linen", "flax.nnx", "flax.linen")
TORCH = "torch"
TORCH_COMPILE = "torch.compile"  # torch.compile(..., dynamic=False), inductor by default
COPY = "ceiling:copy"
ZERO = "ceiling:zero-fill"
DISPATCH = "floor:dispatch"  # a trivial jitted op on the ids: JAX's fixed cost per call
OPTIONS = ("plain", "padding_idx", "scale_grad_by_freq", "max_norm")
# Train-step contenders in the order they are kept when memory runs short.
STEP_PRIORITY = (
    "jaxembed",
    "torch",
    "torch.compile",
    "flax.nnx",
    "jaxembed.nnx",
    "jaxembed.linen",
    "flax.linen",
)

PADDING_IDX = 0
MAX_NORM = 1.0  # rows are N(0, 1) with norm ~sqrt(D): every referenced row is renormed
ZIPF_S = 1.1
LR = {"sgd": 0.1, "adam": 1e-2}
ADAM_EPS = 1e-8


@dataclasses.dataclass(frozen=True)
class Shape:
    V: int
    D: int
    n: int
    dtype: str

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype].itemsize

    def label(self) -> str:
        def k(x):
            return f"{x >> 20}M" if x >= 1 << 20 else f"{x >> 10}k" if x >= 1 << 10 else str(x)

        return (
            f"V={k(self.V)} D={self.D} n={k(self.n)} {'f32' if self.dtype == 'float32' else 'bf16'}"
        )


def bytes_model(op: str, s: Shape) -> int:
    """Bytes a kernel must move at least (index reads and write-allocate traffic ignored).

    fwd / copy: read n rows, write n rows = 2nD. Dense fwd+bwd: forward 2nD, read g nD, scatter
    into the zero-filled V x D gradient (zero-fill VD, then nD updates) = VD + 4nD. SGD step:
    fwd+bwd plus reading W and G and writing W = 4VD + 4nD. Adam: plus reading and writing the
    two moments = 8VD + 4nD. Zero-fill: VD. All times the dtype's itemsize. The dispatch floor
    reads and writes the n int32 ids: 8n.
    """
    nd, vd = s.n * s.D * s.itemsize, s.V * s.D * s.itemsize
    return {
        "fwd": 2 * nd,
        "opt_fwd": 2 * nd,
        COPY: 2 * nd,
        ZERO: vd,
        "fwdbwd": vd + 4 * nd,
        "opt_fwdbwd": vd + 4 * nd,
        "sgd": 4 * vd + 4 * nd,
        "adam": 8 * vd + 4 * nd,
        DISPATCH: 8 * s.n,
    }[op]


def make_ids(dist: str, V: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """int64 ids: ``uniform`` in [0, V); ``zipf``: rank k drawn with p ~ 1/k^1.1, ranks mapped
    to random rows; ``padding``: uniform with exactly half the positions set to PADDING_IDX."""
    if dist == "uniform":
        return rng.integers(0, V, size=n, dtype=np.int64)
    if dist == "zipf":
        cdf = np.cumsum(1.0 / np.arange(1, V + 1, dtype=np.float64) ** ZIPF_S)
        ranks = np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1]), V - 1)
        return rng.permutation(V)[ranks].astype(np.int64)
    if dist == "padding":
        ids = rng.integers(0, V, size=n, dtype=np.int64)
        ids[rng.permutation(n)[: n // 2]] = PADDING_IDX
        return ids
    raise ValueError(f"dist must be one of {DISTS}, got {dist!r}")


# ---------------------------------------------------------------------------------------------
# Reference (float64 numpy) and checks
# ---------------------------------------------------------------------------------------------


class Reference:
    """float64 reference results for one (table, ids, g), per unique referenced row.

    Tolerances are rigorous summation bounds: a row's gradient summed from ``c`` terms in any
    order is within ``c * eps * sum|terms|`` of the exact sum; each further rounding adds
    ``eps * |value|``. Lookups (gathers) must be exact.
    """

    def __init__(self, W: np.ndarray, ids: np.ndarray, g: np.ndarray):
        self.W, self.ids, self.g = W, ids, g
        self.eps = float(jnp.finfo(W.dtype).eps)
        self.uniq, inv, self.counts = np.unique(ids, return_inverse=True, return_counts=True)
        order = np.argsort(inv, kind="stable")
        starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        g64 = g.astype(np.float64)[order]
        self.gsum = np.add.reduceat(g64, starts, axis=0)
        self.gabs = np.add.reduceat(np.abs(g64), starts, axis=0)
        self.W_uniq = W[self.uniq].astype(np.float64)
        rng = np.random.default_rng(1)
        cand = rng.integers(0, W.shape[0], size=512)
        self.untouched = np.unique(cand[~np.isin(cand, self.uniq)])[:256]
        self._rows: np.ndarray | None = None

    @property
    def rows(self) -> np.ndarray:
        if self._rows is None:
            self._rows = self.W[self.ids]
        return self._rows

    def grad(self, option: str = "plain"):
        """(reference rows of the table gradient at ``uniq``, tolerance)."""
        c = self.counts[:, None].astype(np.float64)
        ref, tol = self.gsum.copy(), (c + 1) * self.eps * self.gabs
        if option == "scale_grad_by_freq":
            ref, tol = ref / c, tol / c + 2 * self.eps * np.abs(ref / c)
        if option == "padding_idx":
            ref[self.uniq == PADDING_IDX] = 0
            tol[self.uniq == PADDING_IDX] = 0
        return ref, tol + 1e-30

    def step(self, op: str):
        """(reference new table rows at ``uniq`` after one optax step, tolerance)."""
        gref, gtol = self.grad()
        lr, w = LR[op], self.W_uniq
        if op == "sgd":
            ref = w - lr * gref
            return ref, lr * gtol + 2 * self.eps * (np.abs(w) + lr * np.abs(gref)) + 1e-30
        upd = gref / (np.abs(gref) + ADAM_EPS)  # first Adam step: m_hat / (sqrt(v_hat) + eps)
        # optax forms the bias corrections 1 - b**t in the parameters' dtype: in float32,
        # 1 - float32(0.999) is 1.3e-5 off 0.001, so the update is off by up to ~7e-6 relative.
        # Where the gradient's own error bound reaches |g| its sign is uncertain, and the
        # update (about lr * sign(g)) may legitimately be anywhere in [-lr, lr]: allow 2 lr.
        rel = np.minimum(2.0, 16 * self.eps + 2e-5 + 2 * gtol / (np.abs(gref) + ADAM_EPS))
        ref = w - lr * upd
        return ref, lr * rel * (1 + 4 * self.eps) + 2 * self.eps * (np.abs(w) + np.abs(ref)) + 1e-30

    def renormed_rows(self) -> tuple[np.ndarray, np.ndarray]:
        rows = self.rows.astype(np.float64)
        norm = np.sqrt(np.sum(rows * rows, axis=-1, keepdims=True))
        scale = np.where(norm > MAX_NORM, MAX_NORM / (norm + 1e-7), 1.0)
        ref = rows * scale
        return ref, 4 * self.eps * (np.abs(ref) + 1e-3) + 1e-30


def compare(name: str, got: np.ndarray, ref: np.ndarray, tol) -> dict:
    got = np.asarray(got, dtype=np.float64)
    if got.shape != ref.shape:
        return dict(ok=False, detail=f"{name}: shape {got.shape} != {ref.shape}")
    err = np.abs(got - ref)
    bad = ~(err <= tol)  # NaN counts as bad
    return dict(
        ok=not bool(bad.any()),
        max_err=float(np.nanmax(err)) if err.size else 0.0,
        detail=f"{name}: {int(bad.sum())} of {bad.size} elements outside tolerance"
        if bad.any()
        else f"{name}: ok",
    )


def merge_checks(*checks: dict) -> dict:
    return dict(
        ok=all(c["ok"] for c in checks),
        max_err=max((c.get("max_err", np.inf) for c in checks), default=0.0),
        detail="; ".join(c["detail"] for c in checks),
    )


# ---------------------------------------------------------------------------------------------
# Array access for checks, per framework (device arrays are only partly transferred)
# ---------------------------------------------------------------------------------------------


class _JaxIO:
    @staticmethod
    def rows(x, idx):
        return np.asarray(x[jnp.asarray(idx)]).astype(np.float64)

    @staticmethod
    def full(x):
        return np.asarray(x).astype(np.float64)

    @staticmethod
    def abs_sum(x):
        return float(jnp.sum(jnp.abs(x.astype(jnp.float32))))


class _TorchIO:
    @staticmethod
    def rows(x, idx):
        import torch

        return (
            x.detach()[torch.as_tensor(idx, device=x.device)]
            .float()
            .cpu()
            .numpy()
            .astype(np.float64)
        )

    @staticmethod
    def full(x):
        return x.detach().float().cpu().numpy().astype(np.float64)

    @staticmethod
    def abs_sum(x):
        return float(x.detach().float().abs().sum())


def check_output(op: str, io, out, ref: Reference, option: str = "plain") -> dict:
    """Checks a contender's result for ``op`` against the reference.

    ``out`` is the rows for fwd, ``(rows, grad)`` for fwd+bwd, the new table for a step.
    """
    if op in ("fwd", "opt_fwd"):
        if option == "max_norm":
            r, tol = ref.renormed_rows()
            return compare("rows", io.full(out), r, tol)
        return compare("rows", io.full(out), ref.rows.astype(np.float64), 0.0)
    if op in ("fwdbwd", "opt_fwdbwd"):
        rows, grad = out
        c_rows = (
            compare("rows", io.full(rows), *ref.renormed_rows())
            if option == "max_norm"
            else compare("rows", io.full(rows), ref.rows.astype(np.float64), 0.0)
        )
        gref, gtol = ref.grad("plain" if option == "max_norm" else option)
        got = io.rows(grad, ref.uniq)
        c_grad = compare("grad rows", got, gref, gtol)
        # Nothing outside the referenced rows: the total |grad| equals the referenced rows' total.
        total, touched = io.abs_sum(grad), float(np.abs(got).sum())
        stray = abs(total - touched) <= 1e-3 * max(1.0, touched)
        c_rest = dict(
            ok=stray,
            detail="untouched rows zero"
            if stray
            else f"gradient outside referenced rows: |grad| {total} vs {touched}",
        )
        return merge_checks(c_rows, c_grad, c_rest)
    if op in ("sgd", "adam"):
        r, tol = ref.step(op)
        c_rows = compare("updated rows", io.rows(out, ref.uniq), r, tol)
        c_rest = compare(
            "untouched rows",
            io.rows(out, ref.untouched),
            ref.W[ref.untouched].astype(np.float64),
            0.0,
        )
        return merge_checks(c_rows, c_rest)
    raise ValueError(op)


# ---------------------------------------------------------------------------------------------
# Benches
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Bench:
    """One timed thing: ``call()`` runs it to completion and returns its result; ``check(out)``
    verifies the result of the first call against the reference."""

    call: Callable[[], Any]
    check: Callable[[Any], dict]


def _block(x):
    return jax.block_until_ready(x)


class Problem:
    """Device data for one shape and id distribution, shared by all contenders."""

    def __init__(
        self, shape: Shape, W_np: np.ndarray, W: jax.Array, ids: np.ndarray, g_np: np.ndarray
    ):
        self.shape, self.W_np, self.ids_np, self.g_np = shape, W_np, ids, g_np
        self.W = W  # the device table, made once per (V, D, dtype) (on CPU it aliases W_np)
        self.ids = jnp.asarray(ids.astype(np.int32))
        self.g = jnp.asarray(g_np)
        self.ref = Reference(W_np, ids, g_np)


# --- JAX contenders: (params, lookup(params, ids)) -------------------------------------------


def jax_lookups(shape: Shape) -> dict[str, tuple[Callable, Callable]]:
    """name -> (params_from_table(W), lookup(params, ids)). Modules are built abstractly
    (``nnx.eval_shape``) and given the shared table, so no contender re-initialises V x D."""
    from flax import linen as fnn
    from flax import nnx

    import jaxembed
    from jaxembed import functional as F
    from jaxembed import linen as jlinen

    dt = DTYPES[shape.dtype]

    def nnx_pair(make):
        gd, state = nnx.split(nnx.eval_shape(make))
        return (lambda W: jax.tree.map(lambda _: W, state), lambda s, ids: nnx.merge(gd, s)(ids))

    def linen_pair(module):
        return (lambda W: {"params": {"embedding": W}}, lambda p, ids: module.apply(p, ids))

    return {
        "jaxembed": (lambda W: W, lambda W, ids: F.embedding(ids, W)),
        "jaxembed.nnx": nnx_pair(
            lambda: jaxembed.Embed(shape.V, shape.D, param_dtype=dt, rngs=nnx.Rngs(0))
        ),
        "jaxembed.linen": linen_pair(jlinen.Embed(shape.V, shape.D, param_dtype=dt)),
        "flax.nnx": nnx_pair(lambda: nnx.Embed(shape.V, shape.D, param_dtype=dt, rngs=nnx.Rngs(0))),
        "flax.linen": linen_pair(fnn.Embed(shape.V, shape.D, param_dtype=dt)),
    }


def _table_of(tree):
    (leaf,) = jax.tree.leaves(tree)
    return leaf


class JaxOps:
    """Jitted operations for one JAX contender, compiled once per shape, reused across dists."""

    def __init__(self, to_params: Callable, lookup: Callable):
        self.to_params = to_params

        def fwdbwd(p, ids, g):
            y, vjp = jax.vjp(lambda p: lookup(p, ids), p)
            return y, _table_of(vjp(g)[0])

        def make_step(tx):
            def step(p, s, ids, g):
                _, vjp = jax.vjp(lambda p: lookup(p, ids), p)
                updates, s = tx.update(vjp(g)[0], s, p)
                return optax.apply_updates(p, updates), s

            return jax.jit(step, donate_argnums=(0, 1))

        self.fwd = jax.jit(lookup)
        self.fwdbwd = jax.jit(fwdbwd)
        self.txs = {"sgd": optax.sgd(LR["sgd"]), "adam": optax.adam(LR["adam"], eps=ADAM_EPS)}
        self.steps = {op: make_step(tx) for op, tx in self.txs.items()}

    def bench(self, op: str, pb: Problem) -> Bench:
        check = lambda out: check_output(op, _JaxIO, out, pb.ref)  # noqa: E731
        if op == "fwd":
            p = self.to_params(pb.W)
            return Bench(lambda: _block(self.fwd(p, pb.ids)), check)
        if op == "fwdbwd":
            p = self.to_params(pb.W)
            return Bench(lambda: _block(self.fwdbwd(p, pb.ids, pb.g)), check)
        # Train step: own copy of the table (it is donated), state threaded through the calls.
        p = self.to_params(jnp.array(pb.W, copy=True))
        holder = {"p": p, "s": self.txs[op].init(p)}
        step = self.steps[op]

        def call():
            holder["p"], holder["s"] = step(holder["p"], holder["s"], pb.ids, pb.g)
            return _table_of(_block(holder["p"]))

        return Bench(call, check)


class OptionOps:
    """jaxembed's functional path with one option on (opt_fwd / opt_fwdbwd)."""

    def __init__(self):
        from jaxembed import functional as F

        kw = {
            "plain": {},
            "padding_idx": {"padding_idx": PADDING_IDX},
            "scale_grad_by_freq": {"scale_grad_by_freq": True},
            "max_norm": {"max_norm": MAX_NORM},
        }

        def fwdbwd(k):
            def f(W, ids, g):
                y, vjp = jax.vjp(lambda W: F.embedding(ids, W, **k), W)
                return y, vjp(g)[0]

            return jax.jit(f)

        self.fwd_plain = jax.jit(lambda W, ids: F.embedding(ids, W))
        # torch's max_norm forward: lookup plus in-place renorm of the referenced rows (donated).
        self.fwd_max_norm = jax.jit(
            lambda W, ids: F.embed_and_renorm(ids, W, max_norm=MAX_NORM), donate_argnums=(0,)
        )
        self.fwdbwd = {name: fwdbwd(k) for name, k in kw.items()}

    def bench(self, op: str, option: str, pb: Problem) -> Bench:
        check = lambda out: check_output(op, _JaxIO, out, pb.ref, option)  # noqa: E731
        if op == "opt_fwd":
            if option == "plain":
                return Bench(lambda: _block(self.fwd_plain(pb.W, pb.ids)), check)
            holder = {"W": jnp.array(pb.W, copy=True)}

            def call():
                rows, holder["W"] = self.fwd_max_norm(holder["W"], pb.ids)
                return _block(rows)

            return Bench(call, check)
        f = self.fwdbwd[option]
        return Bench(lambda: _block(f(pb.W, pb.ids, pb.g)), check)


# --- torch ------------------------------------------------------------------------------------


def torch_device() -> tuple[Any, str | None]:
    """(torch module or None, device or a note why torch is skipped)."""
    try:
        import torch
    except ImportError:
        return None, "torch not installed: torch.nn.Embedding skipped"
    if jax.default_backend() == "cpu":
        return torch, "cpu"
    if jax.default_backend() == "gpu" and torch.cuda.is_available():
        return torch, "cuda"
    return None, f"torch has no {jax.default_backend()} device: torch.nn.Embedding skipped"


def torch_compile_backend(torch, backend: str) -> tuple[str | None, str | None]:
    """``(backend, None)`` when ``torch.compile(..., backend=backend)`` works here, else
    ``(None, why)``. inductor on CPU generates C++ and builds it with the system compiler (gcc)
    against Python's headers; a machine without them cannot run it, and the harness then reports
    the contender as unavailable with the error instead of timing anything."""
    try:
        f = torch.compile(lambda x: x + 1, backend=backend, dynamic=False)
        ok = bool((f(torch.ones(2)) == 2).all())
    except Exception as e:  # any failure of the compiler stack: report it
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return None, (
            f"torch.compile (backend {backend!r}) unavailable here: "
            f"{type(e).__name__}: {first[:300]}"
        )
    if not ok:
        return None, f"torch.compile (backend {backend!r}) computed a wrong x + 1: not timed"
    return backend, None


class TorchOps:
    """torch.nn.Embedding sharing the problem's table (steps use their own copy).

    With ``compile_backend`` (``"inductor"``: torch.compile's default) the module's forward and,
    for the steps, ``optimizer.step`` are wrapped in ``torch.compile(..., dynamic=False)``; the
    compilation happens in the first call, which the harness times separately.
    """

    def __init__(self, torch, device: str, compile_backend: str | None = None):
        self.torch, self.device = torch, device
        self.sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        self._key: Problem | None = None
        self.compile_backend = compile_backend

    def _compiled(self, fn):
        if self.compile_backend is None:
            return fn
        return self.torch.compile(fn, backend=self.compile_backend, dynamic=False)

    def _to_torch(self, x: np.ndarray):
        t = self.torch
        if x.dtype == DTYPES["bfloat16"]:
            tt = t.from_numpy(x.view(np.int16)).view(t.bfloat16)
        else:
            tt = t.from_numpy(x)
        return tt.to(self.device)

    def prepare(self, pb: Problem):
        if self._key is not pb:
            self._key = pb
            self.W = self._to_torch(pb.W_np)
            self.ids = self._to_torch(pb.ids_np)
            self.g = self._to_torch(pb.g_np)

    def bench(self, op: str, pb: Problem) -> Bench:
        t, nn = self.torch, self.torch.nn
        self.prepare(pb)
        check = lambda out: check_output(op, _TorchIO, out, pb.ref)  # noqa: E731
        ids, g = self.ids, self.g
        if op == "fwd":
            emb = nn.Embedding.from_pretrained(self.W, freeze=True)
            lookup = self._compiled(emb)

            def call():
                with t.no_grad():
                    y = lookup(ids)
                self.sync()
                return y

            return Bench(call, check)
        if op == "fwdbwd":
            emb = nn.Embedding.from_pretrained(self.W, freeze=False)
            lookup = self._compiled(emb)

            def call():
                emb.weight.grad = None
                y = lookup(ids)
                y.backward(g)
                self.sync()
                return y, emb.weight.grad

            return Bench(call, check)
        emb = nn.Embedding.from_pretrained(self.W.clone(), freeze=False)
        opt = (
            t.optim.SGD(emb.parameters(), lr=LR["sgd"])
            if op == "sgd"
            else t.optim.Adam(emb.parameters(), lr=LR["adam"], eps=ADAM_EPS)
        )
        lookup, opt_step = self._compiled(emb), self._compiled(opt.step)

        def step():
            lookup(ids).backward(g)
            opt_step()
            # Drop the V x D gradient now rather than at the next call, so it is not alive while
            # the other contenders run (the same work as zero_grad at the start of a step).
            opt.zero_grad(set_to_none=True)
            self.sync()
            return emb.weight

        return Bench(step, check)


# --- ceilings ---------------------------------------------------------------------------------


def copy_ceiling(pb: Problem) -> tuple[Bench, str]:
    """A copy of the same n x D bytes the forward writes (and reads)."""
    src = pb.g_np
    if jax.default_backend() == "cpu":
        dst = np.empty_like(src)

        def call():
            np.copyto(dst, src)
            return dst

        return Bench(
            call, lambda out: compare("copy", out.astype(np.float64), src.astype(np.float64), 0.0)
        ), "numpy copyto"
    f = jax.jit(lambda x: -x)  # an elementwise pass: reads and writes n x D once
    return Bench(
        lambda: _block(f(pb.g)),
        lambda out: compare(
            "copy", -np.asarray(out).astype(np.float64), src.astype(np.float64), 0.0
        ),
    ), "jax negate"


def zero_ceiling(pb: Problem, f) -> Bench:
    """A fresh zero-filled V x D array, as the dense backward's first step."""
    return Bench(
        lambda: _block(f()),
        lambda out: dict(ok=_JaxIO.abs_sum(out) == 0.0, max_err=0.0, detail="zero-fill"),
    )


def dispatch_floor(pb: Problem) -> Bench:
    """``ids + 1`` jitted: no table traffic, so its time is JAX's fixed cost of one call (Python
    dispatch, executable launch, thread-pool wake-up), the floor under every JAX contender."""
    f = jax.jit(lambda i: i + 1)
    return Bench(
        lambda: _block(f(pb.ids)),
        lambda out: compare("ids + 1", np.asarray(out).astype(np.float64), pb.ids_np + 1.0, 0.0),
    )


def free_memory():
    gc.collect()
