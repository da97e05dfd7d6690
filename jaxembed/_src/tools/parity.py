"""``jaxembed parity``: a representative torch-vs-jaxembed sweep on the current backend.

Each case feeds identical weights and ids to torch and to jaxembed and compares the results:
forward rows, table gradients, max_norm renorms, module forwards (NNX and Linen), interop round
trips, >= 10-step training runs under ``jax.jit`` (optax vs ``torch.optim``) and frozen tables.
JAX runs on its default backend; torch on CUDA when JAX is on a GPU and torch has CUDA, on CPU
otherwise (TPU included). Tolerances come from ``jaxembed._src.tolerances``.

Exit status: 0 when every case passes, 1 when one fails, 3 when torch is not installed, 2 for a
usage error.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jaxembed._src import interop, tolerances
from jaxembed._src.core import functional as F
from jaxembed._src.testing.compare import abs_diff, eps_of, ulp_distance, within  # one definition
from jaxembed._src.testing.report import format_table as _format_rows
from jaxembed._src.testing.report import json_safe
from jaxembed._src.tolerances import Tolerance
from jaxembed._src.tools.cli import ArgumentParser

NP_DTYPES = {
    "float32": np.float32,
    "float64": np.float64,
    "bfloat16": ml_dtypes.bfloat16,
    "float16": np.float16,
}
MISSING_TORCH_EXIT = 3


# ---------------------------------------------------------------------------------------------
# Comparisons
# ---------------------------------------------------------------------------------------------


def grad_tolerance(backend, gout, ids, num_embeddings, counts=None) -> Tolerance:
    """The gradient's tolerance: bit-exact on CPU (without scale_grad_by_freq), else a bound of
    K * eps * (the row's sum of |contributions|)."""
    if counts is None and tolerances.grad_exact(backend):
        return Tolerance(ulp=0)
    g = np.abs(np.asarray(gout, np.float64)).reshape(-1, gout.shape[-1])
    flat = np.asarray(ids).reshape(-1)
    if counts is not None:
        g = g / counts[flat][:, None]
    mag = np.zeros((num_embeddings, g.shape[1]))
    np.add.at(mag, flat, g)
    sgbf = tolerances.SGBF_BOUND_EPS[np.dtype(gout.dtype).name] if counts is not None else 0.0
    k = sgbf + tolerances.reorder_bound_eps(backend, np.bincount(flat, minlength=num_embeddings))
    return Tolerance(bound=k[:, None] * eps_of(gout.dtype) * mag if np.ndim(k) else k * mag)


def torch_device(backend: str | None = None) -> str:
    """Where the torch reference runs: CUDA for a JAX GPU backend when torch has it, else CPU."""
    import torch

    backend = backend or jax.default_backend()
    return "cuda" if backend == "gpu" and torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    name: str
    dtype: str
    run: Callable[[str, str], tuple]  # (backend, torch_device) -> (got, want, Tolerance)
    x64: bool = False


@dataclasses.dataclass
class Result:
    case: str
    backend: str
    torch_device: str
    dtype: str
    max_abs_diff: float
    max_ulp_diff: int | None
    tolerance: str
    passed: bool
    seconds: float
    error: str | None = None


def _table(v, d, dtype, scale=1.0, seed=0):
    return (np.random.default_rng(seed).normal(size=(v, d)) * scale).astype(NP_DTYPES[dtype])


def _forward_case(dtype):
    def run(backend, device):
        import torch.nn.functional as TF

        w = _table(50, 17, dtype)
        ids = np.random.default_rng(1).integers(0, 50, size=(4, 3, 5))
        want = interop.torch_to_numpy(
            TF.embedding(interop.numpy_to_torch(ids, device), interop.numpy_to_torch(w, device))
        )
        got = np.asarray(F.embedding(jnp.asarray(ids, jnp.int32), jnp.asarray(w)))
        return got, want, Tolerance(ulp=tolerances.FORWARD_ULP)

    return Case(f"forward/{dtype}", dtype, run, x64=dtype == "float64")


def _grad_case(dtype, padding_idx, scale_grad_by_freq):
    def run(backend, device):
        import torch.nn.functional as TF

        v, d = 12, 37
        rng = np.random.default_rng(2)
        w = _table(v, d, dtype)
        ids = rng.integers(0, v, size=(8, 9))  # heavy duplicates: 72 positions over 12 rows
        gout = rng.normal(size=ids.shape + (d,)).astype(NP_DTYPES[dtype])
        kw = dict(padding_idx=padding_idx, scale_grad_by_freq=scale_grad_by_freq)
        wt = interop.numpy_to_torch(w, device).requires_grad_(True)
        TF.embedding(interop.numpy_to_torch(ids, device), wt, **kw).backward(
            interop.numpy_to_torch(gout, device)
        )
        _, vjp = jax.vjp(lambda t: F.embedding(jnp.asarray(ids), t, **kw), jnp.asarray(w))
        (got,) = vjp(jnp.asarray(gout))
        counts = np.bincount(ids.reshape(-1), minlength=v) if scale_grad_by_freq else None
        tol = grad_tolerance(backend, gout, ids, v, counts)
        return np.asarray(got), interop.torch_to_numpy(wt.grad), tol

    name = f"grad/padding_idx={padding_idx}" + ("/scale_grad_by_freq" if scale_grad_by_freq else "")
    return Case(f"{name}/{dtype}", dtype, run, x64=dtype == "float64")


def _renorm_case(dtype, norm_type, max_norm):
    def run(backend, device):
        import torch.nn.functional as TF

        w = _table(64, 17, dtype, scale=1.5, seed=5)
        ids = np.random.default_rng(6).integers(0, 64, size=(6, 7))
        wt = interop.numpy_to_torch(w, device)
        TF.embedding(
            interop.numpy_to_torch(ids, device), wt, max_norm=max_norm, norm_type=norm_type
        )
        got = np.asarray(F.embedding_renorm(jnp.asarray(w), jnp.asarray(ids), max_norm, norm_type))
        tol = Tolerance(ulp=tolerances.renorm_ulp(backend, dtype, norm_type))
        return got, interop.torch_to_numpy(wt), tol

    return Case(
        f"renorm/p={norm_type:g}/max_norm={max_norm:g}/{dtype}", dtype, run, x64=dtype == "float64"
    )


def _module_case(api):
    """Two forwards of a module with max_norm: the second sees the first's persisted renorm."""

    def run(backend, device):
        import torch

        w = _table(30, 16, "float32", scale=1.5, seed=7)
        opts: dict[str, Any] = dict(
            padding_idx=2, max_norm=1.2, norm_type=3.0, scale_grad_by_freq=True
        )
        ids1 = np.random.default_rng(8).integers(0, 30, size=(5, 4))
        ids2 = np.random.default_rng(9).integers(0, 30, size=(7,))
        emb = torch.nn.Embedding.from_pretrained(
            interop.numpy_to_torch(w, device), freeze=False, **opts
        )
        want_rows = [
            interop.torch_to_numpy(emb(interop.numpy_to_torch(i, device))) for i in (ids1, ids2)
        ]
        if api == "nnx":
            module = interop.to_nnx(w, freeze=False, **opts)
            got_rows = [np.asarray(module(jnp.asarray(i))) for i in (ids1, ids2)]
            table = np.asarray(module.embedding.get_value())
        else:
            module, variables = interop.to_linen(w, freeze=False, **opts)
            got_rows = []
            for i in (ids1, ids2):
                out, updates = module.apply(variables, jnp.asarray(i), mutable=["params"])
                variables = {**variables, **updates}
                got_rows.append(np.asarray(out))
            table = np.asarray(variables["params"]["embedding"])
        got = np.concatenate([g.reshape(-1) for g in got_rows] + [table.reshape(-1)])
        want = np.concatenate(
            [x.reshape(-1) for x in want_rows] + [interop.torch_to_numpy(emb.weight).reshape(-1)]
        )
        return got, want, Tolerance(ulp=tolerances.renorm_ulp(backend, "float32", 2.0))

    return Case(f"module/{api}/forward+renorm", "float32", run)


def _interop_case(dtype):
    def run(backend, device):
        import torch

        emb = torch.nn.Embedding(20, 6, padding_idx=-1, max_norm=2.0, dtype=getattr(torch, dtype))
        back = interop.to_torch(interop.to_nnx(emb))
        for k in ("padding_idx", "max_norm", "norm_type", "scale_grad_by_freq"):
            if getattr(back, k) != getattr(emb, k):  # reported as a failing case
                raise AssertionError(f"{k}: {getattr(back, k)!r} != {getattr(emb, k)!r}")
        return (
            interop.torch_to_numpy(back.weight),
            interop.torch_to_numpy(emb.weight),
            (Tolerance(ulp=0)),
        )

    return Case(f"interop/torch->nnx->torch/{dtype}", dtype, run, x64=dtype == "float64")


def _train_case(spec, api, dtype, steps=10, freeze=False, **options):
    from jaxembed._src.tools import training

    def run(backend, device):
        v, d = 20, 17
        rng = np.random.default_rng(11)
        w = _table(v, d, dtype, scale=1.5, seed=10)
        ids = [rng.integers(0, v, size=(6, 7)) for _ in range(steps)]
        targets = [rng.normal(size=(6, 7, d)).astype(NP_DTYPES[dtype]) for _ in range(steps)]
        want = training.torch_train(w, ids, targets, spec, freeze=freeze, device=device, **options)
        got = training.jax_train(w, ids, targets, spec, api=api, freeze=freeze, **options)
        if freeze:
            if options.get("max_norm") is None:
                assert np.array_equal(want.view(np.uint8), w.view(np.uint8)), "torch moved it"
                return got, w, Tolerance(ulp=0)  # bit-identical to the initial table
            return got, want, Tolerance(ulp=tolerances.RENORM_ULP[backend][dtype])  # renorm only
        exact = (
            backend == "cpu"
            and spec.kind == "sgd"
            and not spec.momentum
            and not spec.weight_decay
            and dtype in ("float32", "float64")
            and options.get("max_norm") is None
            and not options.get("scale_grad_by_freq")
        )
        if exact:
            return got, want, Tolerance(ulp=0)
        family = "sgd" if spec.kind == "sgd" else "adam"
        return got, want, Tolerance(normwise_eps=tolerances.TRAJECTORY_EPS[backend][family])

    short = {"padding_idx": "pad", "scale_grad_by_freq": "sgbf"}
    opts = (
        ",".join(
            f"{short.get(k, k)}={v:g}" if not isinstance(v, bool) else short.get(k, k)
            for k, v in options.items()
            if v is not None and v is not False
        )
        or "plain"
    )
    label = ("frozen/" if freeze else "train/") + f"{api}/{spec.label}/{opts}"
    return Case(f"{label}/{dtype}", dtype, run, x64=dtype == "float64")


def default_cases() -> list[Case]:
    """The representative sweep (about 40 cases; well under a minute on a CPU)."""
    from jaxembed._src.tools.training import OptimizerSpec as Opt

    cases = [_forward_case(dt) for dt in tolerances.DTYPES]
    cases += [_grad_case(dt, 0, False) for dt in tolerances.DTYPES]
    cases += [_grad_case("float32", -1, True), _grad_case("bfloat16", 5, True)]
    cases += [
        _renorm_case("float32", p, m)
        for p, m in [(1.0, 3.0), (2.0, 1.0), (3.0, 0.5), (math.inf, 2.0), (0.5, 8.0)]
    ]
    cases += [_renorm_case(dt, 2.0, 1.0) for dt in ("float64", "bfloat16", "float16")]
    cases += [_module_case("nnx"), _module_case("linen")]
    cases += [_interop_case(dt) for dt in ("float32", "bfloat16")]
    every = dict(padding_idx=0, max_norm=1.0, scale_grad_by_freq=True)
    cases += [
        _train_case(Opt("sgd", 0.1), "functional", "float32", padding_idx=0),
        _train_case(Opt("sgd", 0.1), "nnx", "float64", padding_idx=-1),
        _train_case(Opt("sgd", 0.1), "linen", "float32", **every),
        _train_case(Opt("sgd", 0.1, momentum=0.9, nesterov=True), "functional", "float32", **every),
        _train_case(
            Opt("sgd", 0.1, momentum=0.9, weight_decay=0.01), "nnx", "float32", max_norm=1.0
        ),
        _train_case(Opt("sgd", 0.1), "functional", "bfloat16", padding_idx=3),
        _train_case(Opt("adam", 0.01), "functional", "float32", **every),
        _train_case(Opt("adamw", 0.01, weight_decay=0.1), "nnx", "float32", padding_idx=0),
        _train_case(Opt("adamw", 0.01, weight_decay=0.1), "linen", "float32", **every),
        _train_case(Opt("adamw", 0.01, weight_decay=0.1), "nnx", "float32", freeze=True),
        _train_case(
            Opt("sgd", 0.1, momentum=0.9, weight_decay=0.1),
            "linen",
            "float32",
            freeze=True,
            padding_idx=0,
        ),
    ]
    return cases


# ---------------------------------------------------------------------------------------------
# Running and reporting
# ---------------------------------------------------------------------------------------------


def run_case(case: Case, backend: str, device: str) -> Result:
    start = time.perf_counter()
    try:
        with jax.enable_x64(case.x64):
            got, want, tol = case.run(backend, device)
            ulp = ulp_distance(got, want)
            max_abs = float(np.max(abs_diff(got, want), initial=0.0))
            passed = within(got, want, tol)
        error = None
    except Exception as e:  # a crashing case is a failing case, reported with its error
        ulp, max_abs, passed, tol, error = None, math.nan, False, Tolerance(ulp=0), repr(e)
    return Result(
        case.name,
        backend,
        device,
        case.dtype,
        max_abs,
        ulp,
        tol.describe(),
        passed,
        time.perf_counter() - start,
        error,
    )


def format_table(results: list[Result]) -> str:
    header = ("case", "backend", "dtype", "max abs diff", "max ulp diff", "tolerance", "result")
    return _format_rows(
        header,
        [
            (
                r.case,
                f"{r.backend}/torch:{r.torch_device}",
                r.dtype,
                f"{r.max_abs_diff:.3g}",
                "-" if r.max_ulp_diff is None else str(r.max_ulp_diff),
                r.tolerance,
                "pass" if r.passed else "FAIL",
            )
            for r in results
        ],
    )


def _check_json_path(parser, path: str) -> None:
    """``--json`` must name a file we can write, checked before any case runs (exit 2)."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        parser.error(f"argument --json: {path!r} is a directory, not a file")
    if not os.path.isdir(parent):
        parser.error(f"argument --json: directory {parent!r} does not exist")
    if not os.access(parent, os.W_OK):
        parser.error(f"argument --json: directory {parent!r} is not writable")


def _write_json(path: str, data: dict) -> None:
    # A temporary file renamed over the target: an interrupted write leaves no half JSON.
    fd, tmp = tempfile.mkstemp(
        dir=os.path.dirname(os.path.abspath(path)),
        suffix=".tmp",
        prefix=f".{os.path.basename(path)}.",
    )
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def main(argv=None) -> int:
    parser = ArgumentParser(
        prog="jaxembed parity",
        description="Compare jaxembed with torch on the current JAX backend and print a table.",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "-k",
        "--filter",
        metavar="SUBSTRING",
        action="append",
        default=[],
        help="run only cases whose name contains SUBSTRING (repeatable)",
    )
    parser.add_argument("--list", action="store_true", help="list the case names and exit")
    args = parser.parse_args(argv)
    if args.json:
        _check_json_path(parser, args.json)

    cases = default_cases()
    if args.filter:
        cases = [c for c in cases if any(s in c.name for s in args.filter)]
    if args.list:
        print("\n".join(c.name for c in cases))
        return 0
    if not cases:
        print(f"jaxembed parity: no case matches {args.filter}", file=sys.stderr)
        return 2
    if importlib.util.find_spec("torch") is None:
        print(
            "jaxembed parity: torch is not installed; it is the reference this command "
            "compares against. Install it (pip install torch; for the CPU-only build add "
            "--index-url https://download.pytorch.org/whl/cpu), then rerun.",
            file=sys.stderr,
        )
        return MISSING_TORCH_EXIT

    backend = tolerances.backend_key(jax.default_backend())
    device = torch_device(backend)
    print(
        f"jaxembed parity: JAX on {backend} ({jax.devices()[0].device_kind}), "
        f"torch on {device}; {len(cases)} cases",
        flush=True,
    )
    results = []
    for n, case in enumerate(cases, 1):
        r = run_case(case, backend, device)
        results.append(r)
        status = "pass" if r.passed else "FAIL" + (f" ({r.error})" if r.error else "")
        print(f"[{n:>2}/{len(cases)}] {case.name:<64} {status} ({r.seconds:.1f}s)", flush=True)
    print()
    print(format_table(results))
    failed = [r for r in results if not r.passed]
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed")
    if args.json:
        _write_json(
            args.json,
            {
                "backend": backend,
                "device": jax.devices()[0].device_kind,
                "torch_device": device,
                "results": [json_safe(dataclasses.asdict(r)) for r in results],
            },
        )
        print(f"wrote {args.json}")
    return 1 if failed else 0
