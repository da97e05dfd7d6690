"""EmbeddingBag cases for the harness: jaxembed's ``embedding_bag`` against torch's (eager and
``torch.compile``), forward (``bag_fwd``) and forward + table gradient (``bag_fwdbwd``).

A bag configuration is (V, D, number of bags B, mean bag length L). Each is run in two layouts,
``1d`` (N ids cut by offsets, bag lengths uniform in [0, 2L], so some bags are empty) and ``2d``
(a (B, L) input), and four modes: ``sum``, ``mean``, ``max`` and ``psw`` (``sum`` with
``per_sample_weights``). float32 tables, ids uniform in [0, V).

Before it is timed, each contender's result is checked against a float64 numpy reference: the
bag sums within the summation bound ``(c + 1) * eps * sum|terms|`` for a bag of ``c`` terms (the
mean adds one rounding), the max exactly; the table gradient's referenced rows within the same
kind of bound, and no gradient outside them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxembed._src.tools.bench import cases

OPS = ("bag_fwd", "bag_fwdbwd")
LAYOUTS = ("1d", "2d")
MODES = ("sum", "mean", "max", "psw")
# (V, D, bags, mean bag length): the grid of benchmarks/bench_bag.py and RESULTS.md.
FULL_CONFIGS = [
    (10_000, 64, 256, 20),
    (50_000, 128, 2048, 32),
    (50_000, 768, 512, 8),
    (1_000_000, 128, 4096, 16),
]
QUICK_CONFIGS = [(10_000, 64, 256, 20)]


@dataclasses.dataclass(frozen=True)
class BagShape:
    V: int
    D: int
    bags: int
    length: int

    def label(self) -> str:
        def k(x):
            return f"{x >> 20}M" if x >= 1 << 20 else f"{x // 1000}k" if x >= 1000 else str(x)

        return f"V={k(self.V)} D={self.D} B={self.bags} L={self.length} f32"


def bytes_model(op: str, s: BagShape, n: int) -> int:
    """Bytes moved at least (float32): forward reads the N rows and writes the B sums,
    (N + B) D; forward + backward adds the zero-filled V x D gradient, reading the B output
    gradients and the N row updates: V D + 2 (N + B) D."""
    nd, bd, vd = 4 * n * s.D, 4 * s.bags * s.D, 4 * s.V * s.D
    return {"bag_fwd": nd + bd, "bag_fwdbwd": vd + 2 * (nd + bd)}[op]


class BagProblem:
    """Table, bags, weights and output gradient of one (shape, layout), and the float64
    reference pieces shared by all modes."""

    def __init__(self, shape: BagShape, layout: str, rng: np.random.Generator):
        self.shape, self.layout = shape, layout
        V, D, B, L = shape.V, shape.D, shape.bags, shape.length
        self.W = rng.standard_normal((V, D), dtype=np.float32)
        if layout == "2d":
            self.ids = rng.integers(0, V, size=(B, L), dtype=np.int64)
            self.offsets = None
            sizes = np.full(B, L)
        else:
            sizes = rng.integers(0, 2 * L + 1, size=B)
            self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
            self.ids = rng.integers(0, V, size=int(sizes.sum()), dtype=np.int64)
        self.n = int(self.ids.size)
        self.seg = np.repeat(np.arange(B), sizes)  # bag of each flattened position
        self.sizes = sizes
        self.psw = rng.uniform(0.5, 1.5, size=self.ids.shape).astype(np.float32)
        self.g = rng.standard_normal((B, D), dtype=np.float32)
        self.eps = float(np.finfo(np.float32).eps)
        flat = self.ids.reshape(-1)
        self.uniq, self.inv = np.unique(flat, return_inverse=True)
        self.rows64 = self.W[flat].astype(np.float64)
        cand = rng.integers(0, V, size=512)
        self.untouched = np.unique(cand[~np.isin(cand, self.uniq)])[:256]

    def weights(self, mode: str) -> np.ndarray:
        """Each position's factor in the bag reduction's gradient (and sum)."""
        if mode == "psw":
            return self.psw.reshape(-1).astype(np.float64)
        if mode == "mean":
            return 1.0 / np.maximum(self.sizes[self.seg], 1)
        return np.ones(self.n)

    def reference(self, mode: str):
        """(out, out_tol, grad rows at uniq, grad_tol)."""
        B, D = self.shape.bags, self.shape.D
        if mode == "max":
            out = np.zeros((B, D))
            arg = np.zeros((B, D), np.int64)
            starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
            for b in range(B):  # the float64 reference only; B <= a few thousand
                if self.sizes[b]:
                    block = self.rows64[starts[b] : starts[b] + self.sizes[b]]
                    a = np.argmax(block, axis=0)  # first maximum: torch's tie rule
                    out[b] = block[a, np.arange(D)]
                    arg[b] = starts[b] + a
            has = self.sizes > 0
            at = (self.inv[arg[has]], np.arange(D)[None, :])
            grad, gmag, count = (np.zeros((self.uniq.size, D)) for _ in range(3))
            np.add.at(grad, at, self.g[has])
            np.add.at(gmag, at, np.abs(self.g[has]))
            np.add.at(count, at, 1.0)  # several bags may credit one (row, column)
            return out, 0.0, grad, (count + 1) * self.eps * gmag + 1e-30
        w = self.weights(mode)[:, None]
        terms = self.rows64 * (
            self.psw.reshape(-1).astype(np.float64)[:, None] if mode == "psw" else 1.0
        )
        out, mag = np.zeros((B, D)), np.zeros((B, D))
        np.add.at(out, self.seg, terms)
        np.add.at(mag, self.seg, np.abs(terms))
        c = self.sizes[:, None].astype(np.float64)
        tol = (c + 2) * self.eps * mag
        if mode == "mean":
            out = out / np.maximum(c, 1)
            tol = tol / np.maximum(c, 1) + self.eps * np.abs(out)
        contrib = self.g.astype(np.float64)[self.seg] * w
        grad, gmag = np.zeros((self.uniq.size, D)), np.zeros((self.uniq.size, D))
        np.add.at(grad, self.inv, contrib)
        np.add.at(gmag, self.inv, np.abs(contrib))
        hits = np.bincount(self.inv, minlength=self.uniq.size)[:, None]
        return out, tol + 1e-30, grad, (hits + 2) * self.eps * gmag + 1e-30


def check(op: str, io, out, pb: BagProblem, mode: str, ref) -> dict:
    r_out, t_out, r_grad, t_grad = ref
    if op == "bag_fwd":
        return cases.compare("bags", io.full(out), r_out, t_out)
    y, grad = out
    c_out = cases.compare("bags", io.full(y), r_out, t_out)
    got = io.rows(grad, pb.uniq)
    c_grad = cases.compare("grad rows", got, r_grad, t_grad)
    total, touched = io.abs_sum(grad), float(np.abs(got).sum())
    stray = abs(total - touched) <= 1e-3 * max(1.0, touched)
    c_rest = dict(
        ok=stray,
        detail="untouched rows zero"
        if stray
        else f"gradient outside referenced rows: |grad| {total} vs {touched}",
    )
    return cases.merge_checks(c_out, c_grad, c_rest)


# --- contenders ---------------------------------------------------------------------------------


def jax_bench(op: str, pb: BagProblem, mode: str, ref) -> cases.Bench:
    from jaxembed import functional as F

    bag_mode = "sum" if mode == "psw" else mode
    W, ids = jnp.asarray(pb.W), jnp.asarray(pb.ids.astype(np.int32))
    offsets = None if pb.offsets is None else jnp.asarray(pb.offsets.astype(np.int32))
    psw = jnp.asarray(pb.psw) if mode == "psw" else None
    g = jnp.asarray(pb.g)

    def fwd(W, ids, offsets, psw):
        return F.embedding_bag(ids, W, offsets, per_sample_weights=psw, mode=bag_mode)

    if op == "bag_fwd":
        f = jax.jit(fwd)
        call = lambda: jax.block_until_ready(f(W, ids, offsets, psw))  # noqa: E731
    else:

        def fwdbwd(W, ids, offsets, psw, g):
            y, vjp = jax.vjp(lambda W: fwd(W, ids, offsets, psw), W)
            return y, vjp(g)[0]

        f = jax.jit(fwdbwd)
        call = lambda: jax.block_until_ready(f(W, ids, offsets, psw, g))  # noqa: E731
    return cases.Bench(call, lambda out: check(op, cases._JaxIO, out, pb, mode, ref))


def torch_bench(
    torch,
    op: str,
    pb: BagProblem,
    mode: str,
    ref,
    compiled: bool,
    compile_backend: str = "inductor",
) -> cases.Bench:
    F = torch.nn.functional
    W = torch.from_numpy(pb.W)
    ids = torch.from_numpy(pb.ids)
    offsets = None if pb.offsets is None else torch.from_numpy(pb.offsets)
    psw = torch.from_numpy(pb.psw) if mode == "psw" else None
    g = torch.from_numpy(pb.g)
    m = "sum" if mode == "psw" else mode

    def bag(w):
        return F.embedding_bag(ids, w, offsets, mode=m, per_sample_weights=psw)

    if compiled:
        bag = torch.compile(bag, backend=compile_backend, dynamic=False)
    if op == "bag_fwd":

        def call():
            with torch.no_grad():
                return bag(W)
    else:
        w = W.clone().requires_grad_(True)

        def call():
            w.grad = None
            y = bag(w)
            y.backward(g)
            return y, w.grad

    return cases.Bench(call, lambda out: check(op, cases._TorchIO, out, pb, mode, ref))


def groups(configs, ops, torch, compile_backend: str | None, rng, modes=MODES) -> Any:
    """Yields ``(shape, layout, mode, op, n, {contender: Bench})`` for every bag group."""
    for V, D, bags, length in configs:
        shape = BagShape(V, D, bags, length)
        for layout in LAYOUTS:
            pb = BagProblem(shape, layout, rng)
            for mode in modes:
                ref = pb.reference(mode)
                for op in ops:
                    benches = {cases.SUBJECT: jax_bench(op, pb, mode, ref)}
                    if torch is not None:
                        benches[cases.TORCH] = torch_bench(torch, op, pb, mode, ref, False)
                        if compile_backend:
                            benches[cases.TORCH_COMPILE] = torch_bench(
                                torch, op, pb, mode, ref, True, compile_backend
                            )
                    yield shape, layout, mode, op, pb.n, benches
            del pb
            cases.free_memory()
