"""Every tolerance of the parity suite and report, per backend and dtype, in one place.

Units are ulp of the compared dtype unless named otherwise. CPU figures are the measured maxima
(torch 2.13.0 CPU, jax 0.10.2 CPU, 2-core x86-64 with AVX-512) over the suite's configurations,
rounded up to the next small integer. GPU and TPU figures were NOT measured (no accelerator was
available when they were set): they are the CPU figure plus the effect of a different summation
order, stated next to each, and should be replaced by measured ones (run ``jaxembed parity`` and
``pytest parity_tests`` there).

``parity_tests/tolerances.py`` reads these; ``jaxembed parity`` uses them at run time.
"""

from __future__ import annotations

import dataclasses

import numpy as np

BACKENDS = ("cpu", "gpu", "tpu")
DTYPES = ("float32", "float64", "bfloat16", "float16")

# Forward gather: bit-exact on every backend and dtype (a gather copies bits). bfloat16 and
# float16 are gathered as bytes: XLA:CPU's fill-mode bfloat16 gather computes its select in
# float32 and, like a fused uint16 -> bfloat16 bitcast, canonicalised NaN payloads (0x7FC1 ->
# 0x7FC0, 0x7F81 -> 0x7FC0); as bytes every bit is kept (parity_tests/test_bad_inputs.py). With
# max_norm the rows are products (row * scale, scale 1 for kept rows), where XLA:CPU canonicalises
# NaN payloads and flushes subnormals to zero (torch keeps those rows untouched).
FORWARD_ULP = 0


def grad_exact(backend: str) -> bool:
    """Dense gradients without scale_grad_by_freq are bit-exact only on CPU: XLA:CPU's
    scatter-add runs in input order, which is torch's CPU order; GPU/TPU scatters use atomics
    or sorted segments (and torch's CUDA kernel its own order)."""
    return backend == "cpu"


# scale_grad_by_freq: torch adds fma(g, f32(1/count), acc) per term; we round g/count first.
# Bound: K[dtype] * eps(dtype) * sum_i |g_i / count| per element. Measured CPU maxima of K
# (D in {16, 17, 37}, up to 4000 ids, several seeds; parity_tests/measure_tolerances.py gradient
# and test_functional.py): float32 1.44, float64 1.07, float16 1.51, bfloat16 1.66 (half types
# round after every add in both frameworks).
SGBF_BOUND_EPS = {"float32": 1.5, "float64": 1.1, "float16": 1.55, "bfloat16": 1.7}


def reorder_bound_eps(backend: str, counts) -> np.ndarray:
    """Extra gradient bound per row, in eps(dtype) * sum_i |g_i|, for a summation order that is
    not torch's.

    Zero on CPU, where XLA scatters in input order, as torch. Elsewhere (atomics, sorted
    segments) two recursive sums of the same n terms in different orders differ by at most
    2 (n - 1) u sum|g_i| = (n - 1) eps sum|g_i| (Higham, Accuracy and Stability, 4.2), n being
    the row's count. Not measured on an accelerator yet.
    """
    counts = np.asarray(counts, np.float64)
    if grad_exact(backend):
        return np.zeros(counts.shape)
    return np.maximum(counts - 1, 0)


# max_norm renorm: ulp distance of the renormed table / rows. The norm's reduction order differs
# from torch's vectorized CPU kernels (p=2: 8 lanes; p=1, fractional p: other orders and pow), so
# the norm, and with it the scale, can be a few ulp off; without x64 the scale is computed in
# float32 instead of torch's double. Measured CPU maxima, per norm_type (60-6000 rows, D in
# {5, 16, 17, 37, 64}, max_norm in {0.05 .. 50}; parity_tests/measure_tolerances.py renorm and
# test_functional.py):
#   float32: p=0 2, p=0.5 16, p=1 9, p=2 5, p=3 5, p=inf 3
#   float64 (x64): p=0 0, p=0.5 12, p=1 7, p=2 4, p=3 3, p=inf 0
#   float16: p=1 2, p=3 1, others 0;  bfloat16: 0 for every p (2000+ rows).
# GPU/TPU: reductions in another order; widened by 2 ulp (not measured).
RENORM_ULP_BY_NORM = {
    "float32": {0.0: 2, 0.5: 16, 1.0: 9, 2.0: 5, 3.0: 5, float("inf"): 3},
    "float64": {0.0: 0, 0.5: 12, 1.0: 7, 2.0: 4, 3.0: 3, float("inf"): 0},
}
RENORM_ULP = {
    "cpu": {"float32": 16, "float64": 12, "bfloat16": 0, "float16": 2},
    "gpu": {"float32": 18, "float64": 14, "bfloat16": 3, "float16": 4},
    "tpu": {"float32": 18, "float64": 14, "bfloat16": 3, "float16": 4},
}


def renorm_ulp(backend: str, dtype: str, norm_type: float | None = None) -> int:
    """The renorm bound for one dtype, tighter when the norm type is known."""
    worst = RENORM_ULP[backend][dtype]
    by_norm = RENORM_ULP_BY_NORM.get(dtype, {})
    if norm_type is None or norm_type not in by_norm:
        return worst
    return by_norm[norm_type] + (worst - RENORM_ULP["cpu"][dtype])


# Training trajectories (>= 10 steps, jitted optax vs torch.optim), normwise:
# max |jax - torch| <= K * eps(dtype) * max |torch table|. An elementwise ulp bound is meaningless
# here: elements that cross zero during training have arbitrarily large ulp distances.
# On CPU, plain SGD without max_norm / scale_grad_by_freq is bit-exact in float32 and float64
# (torch's add_(g, alpha=-lr) is one FMA, which XLA:CPU also emits under jit).
# The rest differs by: momentum/nesterov (torch rounds buf*momentum before adding g, XLA fuses
# it into an FMA), weight decay (the same), Adam (a different formula, and torch's CPU sqrt is
# MKL's, 1 ulp off IEEE on ~20% of elements), bfloat16/float16 (torch rounds p + (-lr)*g once
# from float32 with lr in float32; optax multiplies by lr rounded to the dtype and rounds the
# product before the add: 7% of bfloat16 elements differ after one step), max_norm (the norm's 1-ulp
# difference above) and scale_grad_by_freq (the fma above).
# For Adam the largest term is optax's float32 bias correction (see ADAM_STEP_REL below).
# Measured CPU maxima of K over parity_tests/test_training.py's matrix and
# parity_tests/measure_tolerances.py trajectories (D in {16, 17}, every optimizer x option):
# SGD family 3.9 (float16, nesterov + weight decay; float32 2.3), Adam/AdamW 10.1 (float32 with
# max_norm; 3.6 without), 3.7 in the other dtypes (bfloat16 with max_norm).
TRAJECTORY_EPS = {
    "cpu": {"sgd": 4.0, "adam": 12.0},
    # GPU/TPU (not measured): the gradient summation order differs too; double the CPU figure.
    "gpu": {"sgd": 8.0, "adam": 24.0},
    "tpu": {"sgd": 8.0, "adam": 24.0},
}

# Adam's single step from an identical state: |diff| <= ADAM_STEP_REL * lr + ADAM_STEP_ULP ulp
# of the parameter. optax computes the bias corrections 1 - b^t in float32 (relative error up to
# ~eps / (1 - b2^t): 1.3e-5 at t=1 for b2=0.999), torch in double; torch's CPU sqrt is MKL's
# (1 ulp off IEEE). Measured CPU max 0.998e-5 (parity_tests/test_training.py::
# test_adam_single_step, 4 steps); the float32 bias correction alone explains
# ~0.65e-5 * |m/sqrt(v)|.
# GPU/TPU: the same formulas (not measured).
ADAM_STEP_ULP = {"cpu": 1, "gpu": 1, "tpu": 1}
ADAM_STEP_REL = {"cpu": 1.2e-5, "gpu": 1.2e-5, "tpu": 1.2e-5}


def backend_key(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """How a comparison passes: ``ulp`` (max ulp distance), or ``bound`` (an elementwise
    absolute bound array), or ``normwise_eps`` (``max|diff| <= K * eps * max|want|``)."""

    ulp: int | None = None
    bound: np.ndarray | None = None
    normwise_eps: float | None = None

    def describe(self) -> str:
        if self.ulp is not None:
            return "bit-exact" if self.ulp == 0 else f"<= {self.ulp} ulp"
        if self.bound is not None:
            return "<= bound"
        return f"<= {self.normwise_eps:g} eps*max|w|"
