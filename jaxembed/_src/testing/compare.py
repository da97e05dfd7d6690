"""Comparing arrays: ulp distances, absolute differences, the parity tolerances, and the
float64 criterion of ``jaxembed.testing``.

One place for the arithmetic of every comparison the project makes: ``jaxembed parity`` and the
parity tests (torch vs jaxembed under a measured :class:`~jaxembed._src.tolerances.Tolerance`)
and ``jaxembed.testing`` (a user's JAX port vs their torch model, judged against float64).
numpy only: no torch, no JAX.
"""

from __future__ import annotations

import dataclasses
import math

import ml_dtypes
import numpy as np

from jaxembed._src.tolerances import Tolerance


def eps_of(dtype) -> float:
    """Machine epsilon of a float dtype (bfloat16 included)."""
    return float(ml_dtypes.finfo(np.dtype(dtype)).eps)


def _is_float(dtype) -> bool:
    dtype = np.dtype(dtype)
    return np.issubdtype(dtype, np.floating) or dtype == ml_dtypes.bfloat16


def ulp_distance(a, b) -> int:
    """Max distance in units in the last place between two same-dtype float arrays.

    NaNs must sit at the same positions (AssertionError otherwise); +0 and -0 count as equal.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    if a.size == 0:
        return 0
    nan_a, nan_b = np.isnan(a.astype(np.float64)), np.isnan(b.astype(np.float64))
    assert np.array_equal(nan_a, nan_b), "NaN positions differ"
    bits = {2: np.int16, 4: np.int32, 8: np.int64}[a.dtype.itemsize]
    ia = a.view(bits).astype(np.int64)
    ib = b.view(bits).astype(np.int64)
    magnitude = np.int64(np.iinfo(bits).max)
    # Map sign-magnitude bit patterns onto a monotonic integer line.
    ia = np.where(ia < 0, -(ia & magnitude), ia)
    ib = np.where(ib < 0, -(ib & magnitude), ib)
    return int(np.max(np.abs(ia - ib)[~nan_a]) if (~nan_a).any() else 0)


def abs_diff(a, b) -> np.ndarray:
    """``|a - b|`` in float64, 0 where both are NaN (and where both are the same infinity)."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    with np.errstate(invalid="ignore"):
        d = np.abs(a64 - b64)
    same = (np.isnan(a64) & np.isnan(b64)) | (np.isinf(a64) & (a64 == b64))
    return np.where(same, 0.0, np.where(np.isnan(d), np.inf, d))


def max_abs(x) -> float:
    """``max |x|`` in float64 over the finite entries (0 for an empty or all-NaN array)."""
    x = np.abs(np.asarray(x, np.float64))
    x = x[np.isfinite(x)]
    return float(x.max()) if x.size else 0.0


def within(got, want, tol: Tolerance) -> bool:
    """Whether ``got`` matches ``want`` under ``tol`` (see :class:`Tolerance`)."""
    if tol.ulp is not None:
        return ulp_distance(got, want) <= tol.ulp
    diff = abs_diff(got, want)
    if tol.bound is not None:
        return bool(np.all(diff <= tol.bound))
    scale = float(np.max(np.abs(np.asarray(want, np.float64)), initial=0.0))
    return bool(np.all(diff <= tol.normwise_eps * eps_of(np.asarray(want).dtype) * scale))


# ---------------------------------------------------------------------------------------------
# The float64 criterion
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Criterion:
    """How ``jaxembed.testing`` judges one tensor of a JAX port against its torch original.

    With a float64 reference (the torch model run in float64 from the same weights and inputs),
    a tensor passes when::

        max|jax - ref| <= k * max|torch - ref| + floor_ulps * eps * max|ref|

    ``eps`` is that of the JAX result's dtype. Rounding moves both frameworks about equally far
    from the exact answer, on shallow and deep models alike; a port bug moves JAX far while torch
    stays close. The floor (a few ulp of the tensor's scale) covers tensors that torch happens to
    compute almost exactly (one matmul, a gather), where the ratio alone would demand more than
    float32 can give.

    Without a float64 reference (a model that hard-codes float32), the fallback is a normwise
    bound on the direct difference::

        max|jax - torch| <= (fallback_eps + floor_ulps) * eps * max|torch|

    which is a guess, not a measurement of this model: the report marks every tensor judged by
    it. ``fallback_eps`` defaults to 64 (MEASURE-ME).

    Bit-identical results always pass and are reported as such.
    """

    k: float = 2.0
    floor_ulps: float = 4.0
    fallback_eps: float = 64.0

    def __post_init__(self):
        for name in ("k", "floor_ulps", "fallback_eps"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"Criterion.{name} must be a finite number >= 0, got {value!r}")

    def describe(self) -> str:
        return f"jax err <= {self.k:g} x torch err + {self.floor_ulps:g} ulp of max|ref|"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The judgement of one tensor (see :class:`Criterion`).

    ``max_abs_diff``: max|jax - torch|. ``jax_error`` / ``torch_error``: max distance of each
    float32 result from the float64 reference (None without one). ``bound``: what ``jax_error``
    (or, in the fallback, ``max_abs_diff``) was held to. ``scale``: max|ref| (max|torch| in the
    fallback). ``ulp``: max ulp distance between the JAX and torch results (same dtype only).
    ``method``: ``"float64"``, ``"fallback"`` (no reference) or ``"exact"`` (integers, bools).
    ``result``: ``"bit-exact"``, ``"pass"`` or ``"FAIL"``.
    """

    max_abs_diff: float
    jax_error: float | None
    torch_error: float | None
    bound: float
    scale: float
    ulp: int | None
    method: str
    result: str
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.result != "FAIL"


def _failure(note: str, method: str) -> Verdict:
    nan = math.nan
    return Verdict(nan, None, None, nan, nan, None, method, "FAIL", note)


def judge(jax_value, torch_value, reference=None, criterion: Criterion = Criterion(), *,
          allowance: float = 0.0) -> Verdict:
    """Judges ``jax_value`` (the port's result) against ``torch_value`` (torch's, same precision)
    and ``reference`` (torch's float64 result, or None for the fallback).

    ``allowance``: an absolute amount added to the bound, for a documented difference of the
    two frameworks' arithmetic that is not rounding (optax's float32 Adam bias correction; see
    :class:`~jaxembed._src.testing.optimizers.OptimizerPair`). NaNs must sit where torch has
    them; infinities must be the same infinity.
    """
    jax_value, torch_value = np.asarray(jax_value), np.asarray(torch_value)
    method = "float64" if reference is not None else "fallback"
    if jax_value.shape != torch_value.shape:
        return _failure(f"shape {jax_value.shape} != torch's {torch_value.shape}", method)
    if not (_is_float(jax_value.dtype) and _is_float(torch_value.dtype)):
        same = np.array_equal(jax_value, torch_value)
        diff = max_abs(abs_diff(jax_value, torch_value)) if jax_value.size else 0.0
        return Verdict(diff, None, None, 0.0, max_abs(torch_value), None, "exact",
                       "bit-exact" if same else "FAIL",
                       "" if same else "non-float results must be equal")
    ulp = ulp_distance(jax_value, torch_value) if (
        jax_value.dtype == torch_value.dtype
        and np.array_equal(np.isnan(jax_value.astype(np.float64)),
                           np.isnan(torch_value.astype(np.float64)))) else None
    diff = abs_diff(jax_value, torch_value)
    max_diff = float(diff.max(initial=0.0))
    bitwise = jax_value.dtype == torch_value.dtype and (
        jax_value.tobytes() == torch_value.tobytes())
    eps = eps_of(jax_value.dtype)
    tiny = float(ml_dtypes.finfo(jax_value.dtype).tiny)
    if reference is None:
        scale = max_abs(torch_value)
        bound = (criterion.fallback_eps + criterion.floor_ulps) * eps * scale + allowance
        jax_err = torch_err = None
        ok = max_diff <= bound + criterion.floor_ulps * tiny
    else:
        reference = np.asarray(reference)
        if reference.shape != torch_value.shape:
            return _failure(f"reference shape {reference.shape} != {torch_value.shape}", method)
        scale = max_abs(reference)
        jax_err = float(abs_diff(jax_value, reference).max(initial=0.0))
        torch_err = float(abs_diff(torch_value, reference).max(initial=0.0))
        bound = criterion.k * torch_err + criterion.floor_ulps * (eps * scale + tiny) + allowance
        ok = jax_err <= bound
    if bitwise:
        return Verdict(0.0, jax_err, torch_err, bound, scale, 0, method, "bit-exact")
    note = "" if math.isfinite(max_diff) else "NaN or infinity where torch has none"
    return Verdict(max_diff, jax_err, torch_err, bound, scale, ulp, method,
                   "pass" if ok and not note else "FAIL", note)
