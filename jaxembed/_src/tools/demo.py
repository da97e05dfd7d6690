"""``jaxembed demo``: the nn.Embedding tutorial, step by step, next to torch.

The tutorial (``shared/seed/nn-embedding-tutorial.md``) prints its tables to 4 decimals; the demo
uses those printed numbers as float32 weights, so every table below can be checked against the
tutorial by eye. Each step prints jaxembed's result and, when torch is installed, torch's result
from the identical weights and the largest difference. A difference beyond the step's stated
tolerance makes the command exit with status 1; without torch the comparisons are skipped (and
said to be) and only the checks that need no reference run.

torch is imported lazily, inside :func:`_import_torch`, never at import time.
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxembed
from jaxembed._src import tolerances

# The tutorial's tables, as printed (torch.manual_seed(42), 4 decimals).
# "权重矩阵" of the first example and of from_pretrained: torch.randn(5, 3) after seed 42.
TUTORIAL_WEIGHT = np.array(
    [
        [0.3367, 0.1288, 0.2345],
        [0.2303, -1.1229, -0.1863],
        [2.2082, -0.6380, 0.4617],
        [0.2674, 0.5349, 0.8094],
        [1.1103, -1.6898, -0.9890],
    ],
    np.float32,
)
# nn.Embedding(5, 3, padding_idx=0) as printed in the padding_idx section (the next 15 draws).
TUTORIAL_PADDING_WEIGHT = np.array(
    [
        [0.0, 0.0, 0.0],
        [-0.7658, -0.7506, 1.3525],
        [0.6863, -0.3278, 0.7950],
        [0.2815, 0.0562, 0.5227],
        [-0.2384, -0.0499, 0.5263],
    ],
    np.float32,
)
# The tutorial's target is torch.randn(3, 3), not printed. It is the next 9 draws of the same
# generator (seed 42 after 30 draws), rounded to 4 decimals like the tables.
TUTORIAL_TARGET = np.array(
    [
        [-0.0085, 0.7291, 0.1331],
        [0.8640, -1.0157, -0.8887],
        [0.1498, -0.2089, -0.3870],
    ],
    np.float32,
)
# What the tutorial prints for that step. Its weights had more digits than it printed, so from
# the 4-decimal weights the updated table can differ by one in the 4th decimal (0.6902 here vs
# the tutorial's 0.6903); the demo checks both against these within that much.
TUTORIAL_GRAD = np.array(
    [[0, 0, 0], [0, 0, 0], [-0.0395, 0.1529, 0.3742], [0, 0, 0], [-0.0863, 0.0353, 0.2030]],
    np.float32,
)
TUTORIAL_UPDATED = np.array(
    [
        [0.0, 0.0, 0.0],
        [-0.7658, -0.7506, 1.3525],
        [0.6903, -0.3430, 0.7576],
        [0.2815, 0.0562, 0.5227],
        [-0.2297, -0.0534, 0.5060],
    ],
    np.float32,
)
TUTORIAL_DIGIT = 1.5e-4  # one unit of the 4th decimal, plus the rounding of the printout
TUTORIAL_IDS = np.array([0, 2, 4], np.int32)
LEARNING_RATE = 0.1
MAX_NORM = 1.0
MAX_NORM_IDS = np.array([0, 2], np.int32)  # row 2 (norm 2.34) is renormed; row 0 (0.43) is not

# Tolerances, in ulp of float32. Forward lookups and the stored tables are bit-exact on every
# backend (gathers and copies). The gradient and the jitted optax SGD step are bit-exact on CPU
# (XLA:CPU contracts p - lr * g to torch's FMA); on GPU/TPU the fusion decisions are the
# compiler's, so one rounding of slack is allowed there. max_norm's scale is computed in float32
# without jax_enable_x64 (torch: double), so renormed rows may differ by a few ulp: the parity
# suite's measured p=2 bound (jaxembed/_src/tolerances.py).
EXACT = 0
ARITHMETIC_ULP = 0 if jax.default_backend() == "cpu" else 1
RENORM_ULP = tolerances.renorm_ulp(tolerances.backend_key(jax.default_backend()), "float32", 2.0)


def _import_torch():
    """torch, or None when it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def _fmt(x, indent: str = "    ") -> str:
    text = np.array2string(
        np.asarray(x, np.float32),
        precision=4,
        floatmode="fixed",
        separator=", ",
        suppress_small=True,
    )
    return "\n".join(indent + line for line in text.splitlines())


def _max_ulp(a: np.ndarray, b: np.ndarray) -> int:
    """Largest distance in float32 units in the last place (+0 and -0 equal)."""
    ia = np.asarray(a, np.float32).view(np.int32).astype(np.int64)
    ib = np.asarray(b, np.float32).view(np.int32).astype(np.int64)
    # Sign-magnitude bit patterns onto a monotonic integer line.
    ia = np.where(ia < 0, -(ia & 0x7FFFFFFF), ia)
    ib = np.where(ib < 0, -(ib & 0x7FFFFFFF), ib)
    return int(np.max(np.abs(ia - ib), initial=0))


@dataclasses.dataclass
class Report:
    """Prints results and remembers every check that failed."""

    torch: object | None
    failures: list[str] = dataclasses.field(default_factory=list)
    compared: int = 0

    def show(self, label: str, value) -> None:
        print(f"  {label}:")
        print(_fmt(value))

    def expect(self, label: str, ok: bool) -> None:
        """A property that must hold whether or not torch is installed."""
        print(f"  check  {label}: {'OK' if ok else 'FAILED'}")
        if not ok:
            self.failures.append(label)

    def compare(self, label: str, ours, theirs, max_ulp: int = EXACT, show: bool = True) -> None:
        """Prints torch's value next to ours (already shown) and the difference."""
        ours = np.asarray(ours, np.float32)
        theirs = np.asarray(theirs, np.float32)
        if show:
            self.show(f"torch    {label}", theirs)
        if ours.shape != theirs.shape:
            ok, detail = False, f"shapes differ: {ours.shape} vs {theirs.shape}"
        else:
            ulp = _max_ulp(ours, theirs)
            diff = float(np.max(np.abs(ours - theirs), initial=0.0))
            ok = ulp <= max_ulp
            bound = "bit-exact" if max_ulp == 0 else f"<= {max_ulp} ulp"
            detail = f"max |jaxembed - torch| = {diff:.3g} ({ulp} ulp; required {bound})"
        print(f"  torch  {label}: {detail}: {'OK' if ok else 'DIFFERS'}")
        self.compared += 1
        if not ok:
            self.failures.append(f"{label} vs torch")


def _header(n: int, title: str) -> None:
    print(f"\nStep {n}. {title}")
    print("-" * (len(title) + 9))


# ---------------------------------------------------------------------------------------------
# torch's side of each step (identical weights; CPU).
# ---------------------------------------------------------------------------------------------


def _torch_lookup(torch, weight, ids, **kwargs):
    emb = torch.nn.Embedding.from_pretrained(torch.from_numpy(weight.copy()), **kwargs)
    out = emb(torch.from_numpy(ids.astype(np.int64)))
    return out.detach().numpy(), emb.weight.detach().numpy()


def _torch_padding_init(torch):
    torch.manual_seed(42)
    return torch.nn.Embedding(5, 3, padding_idx=0).weight.detach().numpy()


def _torch_sgd_step(torch, weight, ids, target, lr):
    emb = torch.nn.Embedding(*weight.shape, padding_idx=0)
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(weight))
    optimizer = torch.optim.SGD(emb.parameters(), lr=lr)
    optimizer.zero_grad()
    loss = torch.nn.MSELoss()(emb(torch.from_numpy(ids.astype(np.int64))), torch.from_numpy(target))
    loss.backward()
    loss = loss.detach()
    grad = emb.weight.grad.numpy().copy()
    optimizer.step()
    return loss.item(), grad, emb.weight.detach().numpy()


def _torch_from_pretrained(torch, weight, **kwargs):
    emb = torch.nn.Embedding.from_pretrained(torch.from_numpy(weight.copy()), **kwargs)
    return emb.weight.detach().numpy(), emb.weight.requires_grad


# ---------------------------------------------------------------------------------------------
# The steps
# ---------------------------------------------------------------------------------------------


def step_lookup(report: Report) -> None:
    _header(1, "Lookup of ids [0, 2, 4] in a 5x3 table")
    report.show("weight (the tutorial's printed table)", TUTORIAL_WEIGHT)
    embed = jaxembed.Embed.from_pretrained(TUTORIAL_WEIGHT)
    out = embed(jnp.asarray(TUTORIAL_IDS))
    report.show("jaxembed Embed.from_pretrained(weight)(ids)", out)
    report.expect("the output is rows 0, 2 and 4", np.array_equal(out, TUTORIAL_WEIGHT[[0, 2, 4]]))
    if report.torch is not None:
        want, _ = _torch_lookup(report.torch, TUTORIAL_WEIGHT, TUTORIAL_IDS)
        report.compare("nn.Embedding.from_pretrained(weight)(ids)", out, want)


def step_padding_init(report: Report) -> None:
    _header(2, "padding_idx=0: row 0 is zero at init")
    embed = jaxembed.Embed(5, 3, padding_idx=0, rngs=nnx.Rngs(42))
    table = np.asarray(embed.embedding.get_value())
    report.show("jaxembed Embed(5, 3, padding_idx=0, rngs=nnx.Rngs(42)).embedding", table)
    report.expect("row 0 is exactly zero", not np.any(table[0]))
    report.expect("the other rows are N(0, 1) draws (non-zero)", bool(np.all(table[1:] != 0)))
    if report.torch is not None:
        want = _torch_padding_init(report.torch)
        report.show("torch    nn.Embedding(5, 3, padding_idx=0).weight (seed 42)", want)
        print(
            "  (rows 1-4 are draws of different generators, JAX's and torch's: only row 0 is"
            " compared)"
        )
        report.compare("row 0", table[0], want[0], show=False)


def step_sgd(report: Report) -> None:
    _header(3, "Training step: padding_idx=0, MSE loss, optax SGD(lr=0.1) under nnx.jit")
    model = jaxembed.Embed.from_pretrained(TUTORIAL_PADDING_WEIGHT, freeze=False, padding_idx=0)
    optimizer = nnx.Optimizer(model, optax.sgd(LEARNING_RATE), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, ids, target):
        def loss_fn(model):
            return jnp.mean((model(ids) - target) ** 2)  # nn.MSELoss()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss, grads.embedding.get_value()

    before = np.asarray(model.embedding.get_value())
    print(f"  ids: {TUTORIAL_IDS.tolist()}")
    report.show("target (the tutorial's torch.randn(3, 3))", TUTORIAL_TARGET)
    loss, grad = train_step(
        model, optimizer, jnp.asarray(TUTORIAL_IDS), jnp.asarray(TUTORIAL_TARGET)
    )
    after = np.asarray(model.embedding.get_value())
    grad = np.asarray(grad)
    print(f"  jaxembed loss: {float(loss):.6f}")

    torch_result = None
    if report.torch is not None:
        torch_result = _torch_sgd_step(
            report.torch, TUTORIAL_PADDING_WEIGHT, TUTORIAL_IDS, TUTORIAL_TARGET, LEARNING_RATE
        )
        print(f"  torch    loss: {torch_result[0]:.6f}")

    report.show("jaxembed gradient", grad)
    report.expect(
        "gradient rows 0 (padding), 1 and 3 (unused) are exactly zero", not np.any(grad[[0, 1, 3]])
    )
    report.expect(
        "gradient is the tutorial's printed one (to its 4 decimals)",
        np.max(np.abs(grad - TUTORIAL_GRAD)) <= TUTORIAL_DIGIT,
    )
    if torch_result is not None:
        report.compare("gradient", grad, torch_result[1], ARITHMETIC_ULP)

    report.show("table before the update", before)
    report.show("jaxembed table after the update", after)
    report.expect(
        "rows 0, 1 and 3 are unchanged", np.array_equal(after[[0, 1, 3]], before[[0, 1, 3]])
    )
    report.show("the tutorial's printed table after the update", TUTORIAL_UPDATED)
    report.expect(
        "the updated table is the tutorial's within one unit of its 4th decimal",
        np.max(np.abs(after - TUTORIAL_UPDATED)) <= TUTORIAL_DIGIT,
    )
    if torch_result is not None:
        report.compare("table after optimizer.step()", after, torch_result[2], ARITHMETIC_ULP)


def step_from_pretrained(report: Report) -> None:
    _header(4, "from_pretrained(weight, freeze=False), then with padding_idx=0")
    for kwargs in ({"freeze": False}, {"freeze": False, "padding_idx": 0}):
        args = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        embed = jaxembed.Embed.from_pretrained(TUTORIAL_WEIGHT, **kwargs)
        table = np.asarray(embed.embedding.get_value())
        trainable = isinstance(embed.embedding, nnx.Param)
        report.show(f"jaxembed Embed.from_pretrained(weight, {args}).embedding", table)
        print(f"  trainable (nnx.Param): {trainable}")
        report.expect(
            "the table is the pretrained one, row 0 NOT zeroed",
            np.array_equal(table, TUTORIAL_WEIGHT),
        )
        if report.torch is not None:
            want, requires_grad = _torch_from_pretrained(report.torch, TUTORIAL_WEIGHT, **kwargs)
            report.compare(f"nn.Embedding.from_pretrained(weight, {args}).weight", table, want)
            report.expect("trainable as torch's requires_grad", trainable == requires_grad)


def step_max_norm(report: Report) -> None:
    _header(5, f"max_norm={MAX_NORM}: lookup of ids [0, 2] renorms row 2 and stores it")
    embed = jaxembed.Embed.from_pretrained(TUTORIAL_WEIGHT, freeze=False, max_norm=MAX_NORM)
    report.show("row norms before", np.linalg.norm(TUTORIAL_WEIGHT, axis=1)[None])
    out = nnx.jit(lambda m, ids: m(ids))(embed, jnp.asarray(MAX_NORM_IDS))
    table = np.asarray(embed.embedding.get_value())
    report.show("jaxembed output (under nnx.jit)", out)
    report.show("jaxembed table after the lookup", table)
    report.show("row norms after", np.linalg.norm(table, axis=1)[None])
    norm2 = float(np.linalg.norm(table[2]))
    report.expect(
        f"row 2 renormed to norm {MAX_NORM} (got {norm2:.7f})", abs(norm2 - MAX_NORM) < 1e-6
    )
    report.expect(
        "row 0 (below max_norm) and row 4 (above it, not looked up) unchanged",
        np.array_equal(table[[0, 1, 3, 4]], TUTORIAL_WEIGHT[[0, 1, 3, 4]]),
    )
    if report.torch is not None:
        want_out, want_table = _torch_lookup(
            report.torch, TUTORIAL_WEIGHT, MAX_NORM_IDS, freeze=False, max_norm=MAX_NORM
        )
        report.compare("output", out, want_out, RENORM_ULP)
        report.compare("weight after the lookup (renormed in place)", table, want_table, RENORM_ULP)


STEPS = (step_lookup, step_padding_init, step_sgd, step_from_pretrained, step_max_norm)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="jaxembed demo",
        description="The nn.Embedding tutorial's examples in jaxembed, next to torch.",
    )
    parser.add_argument(
        "--no-torch",
        action="store_true",
        help="skip the torch comparisons even when torch is installed",
    )
    parser.add_argument(
        "--step",
        type=int,
        choices=range(1, len(STEPS) + 1),
        action="append",
        help="run only this step (repeatable); default: all five",
    )
    args = parser.parse_args(argv)
    torch = None if args.no_torch else _import_torch()
    report = Report(torch)
    print(f"jaxembed demo: jax {jax.__version__}, backend {jax.default_backend()}")
    if torch is None:
        why = "--no-torch" if args.no_torch else "torch is not installed"
        print(f"torch comparisons: SKIPPED ({why}); only jaxembed's own checks run.")
    else:
        print(f"torch comparisons: torch {torch.__version__} (CPU), from identical weights.")
    for n in sorted(set(args.step or range(1, len(STEPS) + 1))):
        STEPS[n - 1](report)
    print()
    if report.failures:
        print(f"FAILED: {len(report.failures)} check(s): " + "; ".join(report.failures))
        return 1
    if torch is None:
        print("All jaxembed checks passed; torch comparisons skipped.")
    else:
        print(f"All checks passed: {report.compared} torch comparisons.")
    return 0
