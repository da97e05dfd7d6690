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
    wide = a.dtype == ml_dtypes.bfloat16  # numpy's isnan needs a native float type
    nan_a = np.isnan(a.astype(np.float32) if wide else a)
    nan_b = np.isnan(b.astype(np.float32) if wide else b)
    assert np.array_equal(nan_a, nan_b), "NaN positions differ"
    widths: dict[int, type[np.signedinteger]] = {2: np.int16, 4: np.int32, 8: np.int64}
    bits = widths[a.dtype.itemsize]
    magnitude = bits(np.iinfo(bits).max)
    lines = []
    for x in (a, b):
        # Map sign-magnitude bit patterns onto a monotonic integer line (+0 and -0 both to 0);
        # in the float's own width, which holds the result, then widened for the difference.
        i = x.view(bits)
        lines.append(np.where(i < 0, -(i & magnitude), i).astype(np.int64))
    d = np.abs(lines[0] - lines[1])
    if nan_a.any():
        d = d[~nan_a]
    return int(d.max(initial=0))


def abs_diff(a, b) -> np.ndarray:
    """``|a - b|`` in float64, 0 where both are NaN (and where both are the same infinity)."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    with np.errstate(invalid="ignore"):
        d = np.abs(a64 - b64)
    if np.isfinite(d.max(initial=0.0)):  # the common case: no NaN or infinity anywhere
        return d
    same = (np.isnan(a64) & np.isnan(b64)) | (np.isinf(a64) & (a64 == b64))
    return np.where(same, 0.0, np.where(np.isnan(d), np.inf, d))


def max_abs(x) -> float:
    """``max |x|`` in float64 over the finite entries (0 for an empty or all-NaN array)."""
    x = np.abs(np.asarray(x, np.float64))
    top = float(x.max(initial=0.0))
    if np.isfinite(top):
        return top
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
    assert tol.normwise_eps is not None, "a Tolerance sets ulp, bound or normwise_eps"
    return bool(np.all(diff <= tol.normwise_eps * eps_of(np.asarray(want).dtype) * scale))


# ---------------------------------------------------------------------------------------------
# The float64 criterion
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Criterion:
    """How ``jaxembed.testing`` judges one tensor of a JAX port against its torch original.

    The reference is torch's model run in float64 from the same float32 weights and inputs.
    With ``jax err = max|jax - ref|``, ``torch err = max|torch - ref|`` and, when the JAX model
    also ran in float64, ``jax own = max|jax - jax float64|`` (JAX's own float32 rounding), a
    tensor passes when::

        jax err <= k * max(torch err, min(jax own, max_rounding_ratio * torch err))
                   + floor_ulps * eps * max|ref|

    ``eps`` is that of the JAX result's dtype. A port bug moves JAX away from torch's exact
    answer while its own rounding stays small (``jax err`` far above both errors); rounding
    moves both frameworks about as far as their own arithmetic goes. The floor (a few ulp of the
    tensor's scale) covers tensors that torch computes almost exactly (a gather, one add).

    Why JAX's own rounding counts, up to a limit: the two frameworks do not round equally.
    XLA:CPU's float32 matmul accumulates less accurately than torch's MKL: a 72x384 @ 384x384
    product has 1.9x torch's error, 72x1536 @ 1536x384 4.2x. Through MiniLM's 6 layers (forward,
    103 gradients, 5 AdamW steps; cotangent seeds 0-3) the forward stays within 2.8x torch's
    error, but the gradients reach 4.6x (seed 0) and 28.8x (seed 1); with JAX's ``Linear``
    products accumulated in float64 the same gradients are within 1.6x. Judged by
    ``k * torch err`` alone (this rule without ``jax own``) a correct port fails on CPU; with
    JAX's own rounding it passes, and each of five planted bugs still fails, by 10x its bound
    (a tanh GELU) to 2x10^6 (a missing kernel transpose). ``max_rounding_ratio`` (default 64,
    above the 28.8 measured) keeps numerically unstable ports failing: beyond that many times
    torch's rounding, JAX's own rounding is no excuse. Without a JAX float64 result the rule is
    ``jax err <= k * torch err + floor``.
    (``python parity_tests/measure_testing.py matmul|dots|minilm`` prints these figures.)

    Without a float64 reference (a torch model that stays float32 under ``.double()``), the
    fallback is a normwise bound on the direct difference::

        max|jax - torch| <= (fallback_eps + floor_ulps) * eps * max|torch|

    a guess, not a measurement of the model: the report marks every tensor judged by it.
    ``fallback_eps`` (default 64) covers MiniLM's forward (measured 49.9: every module's output
    and the outputs) and small models' gradients and steps; it cannot judge a deep model's
    gradients or adaptive steps (MiniLM's exceed it by 10x to 10^7x: gradients that are zero
    in exact arithmetic, the attention key biases', are pure rounding in both frameworks), nor
    catch a small bug (a tanh GELU moves MiniLM's intermediate output by 160 eps). Judge those
    against float64.

    Bit-identical results always pass and are reported as such.
    """

    k: float = 2.0
    floor_ulps: float = 4.0
    max_rounding_ratio: float = 64.0
    fallback_eps: float = 64.0

    def __post_init__(self):
        for name in ("k", "floor_ulps", "max_rounding_ratio", "fallback_eps"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"Criterion.{name} must be a finite number >= 0, got {value!r}")

    def describe(self) -> str:
        return (
            f"jax err <= {self.k:g} x max(torch err, jax own err <= "
            f"{self.max_rounding_ratio:g} x torch err) + {self.floor_ulps:g} ulp of max|ref|"
        )


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The judgement of one tensor (see :class:`Criterion`).

    ``max_abs_diff``: max|jax - torch|. ``jax_error`` / ``torch_error``: max distance of each
    float32 result from the float64 reference (None without one). ``jax_own_error``: max|jax -
    JAX's float64 result| (None without one). ``f64_gap``: max|JAX float64 - reference|, the
    two models' distance without float32 rounding. ``bound``: what ``jax_error`` (or, in the
    fallback, ``max_abs_diff``) was held to. ``scale``: max|ref| (max|torch| in the fallback).
    ``ulp``: max ulp distance between the JAX and torch results (same dtype only). ``method``:
    ``"float64"``, ``"fallback"`` (no reference) or ``"exact"`` (integers, bools). ``result``:
    ``"bit-exact"``, ``"pass"`` or ``"FAIL"``.
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
    jax_own_error: float | None = None
    f64_gap: float | None = None

    @property
    def passed(self) -> bool:
        return self.result != "FAIL"


def _failure(note: str, method: str) -> Verdict:
    nan = math.nan
    return Verdict(nan, None, None, nan, nan, None, method, "FAIL", note)


def judge(
    jax_value,
    torch_value,
    reference=None,
    criterion: Criterion = Criterion(),
    *,
    jax_reference=None,
    allowance: float = 0.0,
    element_allowance=None,
    element_reason: str = "",
) -> Verdict:
    """Judges ``jax_value`` (the port's result) against ``torch_value`` (torch's, same precision)
    and ``reference`` (torch's float64 result, or None for the fallback).

    ``jax_reference``: the JAX model's own float64 result (its rounding; see
    :class:`Criterion`), or None. ``allowance``: an absolute amount added to the bound, for a
    documented difference of the two frameworks' arithmetic that is not rounding (optax's
    float32 Adam bias correction; see
    :class:`~jaxembed._src.testing.optimizers.OptimizerPair`). ``element_allowance``: an array
    (broadcast to the value's shape) of further per-element allowances, for elements whose
    result is undetermined at float32 precision (``element_reason`` says why; the note counts
    the elements that needed it). NaNs must sit where torch has them; infinities must be the
    same infinity.
    """
    jax_value, torch_value = np.asarray(jax_value), np.asarray(torch_value)
    method = "float64" if reference is not None else "fallback"
    if jax_value.shape != torch_value.shape:
        return _failure(f"shape {jax_value.shape} != torch's {torch_value.shape}", method)
    if not (_is_float(jax_value.dtype) and _is_float(torch_value.dtype)):
        same = np.array_equal(jax_value, torch_value)
        max_int_diff = max_abs(abs_diff(jax_value, torch_value)) if jax_value.size else 0.0
        return Verdict(
            max_int_diff,
            None,
            None,
            0.0,
            max_abs(torch_value),
            None,
            "exact",
            "bit-exact" if same else "FAIL",
            "" if same else "non-float results must be equal",
        )
    jax64, torch64 = jax_value.astype(np.float64), torch_value.astype(np.float64)
    diff = abs_diff(jax64, torch64)
    max_diff = float(diff.max(initial=0.0))
    same_nans = math.isfinite(max_diff) or np.array_equal(np.isnan(jax64), np.isnan(torch64))
    ulp = (
        ulp_distance(jax_value, torch_value)
        if (jax_value.dtype == torch_value.dtype and same_nans)
        else None
    )
    bitwise = jax_value.dtype == torch_value.dtype and np.array_equal(
        jax_value.reshape(-1).view(np.uint8), torch_value.reshape(-1).view(np.uint8)
    )
    eps = eps_of(jax_value.dtype)
    tiny = float(ml_dtypes.finfo(jax_value.dtype).tiny)
    own = gap = None
    if reference is None:
        scale = max_abs(torch64)
        bound = (criterion.fallback_eps + criterion.floor_ulps) * eps * scale + allowance
        jax_err = torch_err = None
        err = diff
        ok = max_diff <= bound + criterion.floor_ulps * tiny
    else:
        reference = np.asarray(reference)
        if reference.shape != torch_value.shape:
            return _failure(f"reference shape {reference.shape} != {torch_value.shape}", method)
        scale = max_abs(reference)
        err = abs_diff(jax64, reference)
        jax_err = float(err.max(initial=0.0))
        torch_err = float(abs_diff(torch64, reference).max(initial=0.0))
        rounding = torch_err
        if jax_reference is not None and np.shape(jax_reference) == jax_value.shape:
            own = float(abs_diff(jax64, jax_reference).max(initial=0.0))
            gap = float(abs_diff(jax_reference, reference).max(initial=0.0))
            rounding = max(torch_err, min(own, criterion.max_rounding_ratio * torch_err))
        bound = criterion.k * rounding + criterion.floor_ulps * (eps * scale + tiny) + allowance
        ok = jax_err <= bound
    problem = "" if math.isfinite(max_diff) else "NaN or infinity where torch has none"
    note = problem
    if not ok and element_allowance is not None and not problem:
        # The elements beyond the tensor's bound must each be within their own allowance.
        scalar = bound + (criterion.floor_ulps * tiny if reference is None else 0.0)
        beyond = err > scalar
        extra = np.broadcast_to(np.asarray(element_allowance, np.float64), err.shape)
        ok = bool(np.all(err[beyond] <= scalar + extra[beyond]))
        if ok:
            note = f"{int(beyond.sum())} element(s) beyond the bound: {element_reason}"
    if bitwise:
        return Verdict(0.0, jax_err, torch_err, bound, scale, 0, method, "bit-exact", "", own, gap)
    return Verdict(
        max_diff,
        jax_err,
        torch_err,
        bound,
        scale,
        ulp,
        method,
        "pass" if ok and not problem else "FAIL",
        note,
        own,
        gap,
    )
