"""Every tolerance of the parity suite, in one place, per backend and dtype.

Units are ulp of the compared dtype unless named otherwise. Each figure is the measured maximum
on CPU (torch 2.13.0, jax 0.10.2) unless a comment says why it is wider. On GPU and TPU the
scatter-add order of the backward differs from torch's, so gradients there are compared against
a bound on the row's magnitude sum instead of in ulp.
"""

from __future__ import annotations

import jax

BACKEND = jax.default_backend()  # "cpu", "gpu" or "tpu"
ON_CPU = BACKEND == "cpu"

# Forward gather: bit-exact on every backend and dtype.
FORWARD_ULP = 0

# Dense gradient without scale_grad_by_freq. XLA:CPU's scatter-add runs in input order, which is
# torch's CPU order, so it is bit-exact; elsewhere the order differs (atomics, sorted segments).
GRAD_EXACT = ON_CPU

# scale_grad_by_freq: torch adds fma(g, f32(1/count), acc) per term; we round g/count first.
# The difference is bounded by K * eps(dtype) * sum_i |g_i / count| per element.
SGBF_BOUND_EPS = 2.0

# Non-CPU gradients (different summation order): K * eps(dtype) * sum_i |g_i| per element.
REORDER_BOUND_EPS = 2.0

# max_norm renorm, relative ulp of the renormed row elements. p=2 norms differ from torch's
# 8-lane CPU reduction by 1 ulp on ~30% of rows; the float32 scale (without x64) adds at most
# 1 ulp. Measured max: see test_renorm_matches_torch.
RENORM_ULP = {"float32": 4, "float64": 4, "bfloat16": 1, "float16": 1}

# Whole SGD runs with max_norm: renorm differences (above) carried through the steps.
TRAJECTORY_ULP = {"float32": 64}

# EmbeddingBag -------------------------------------------------------------------------------
# bfloat16 sum/mean without padding_idx: torch takes FBGEMM's fast path, which rounds the
# float32 bag sum to bfloat16 with ties away from zero instead of to even (torch-semantics.md
# §7, exp7b): 1 ulp on exact ties. With padding_idx torch rounds to even and we are bit-exact.
BAG_BF16_FAST_PATH_ULP = 1

# Mean (and scale_grad_by_freq) gradients: torch adds fma(g, dtype(1/size), acc) per term, in
# its sorted-id order; we round g * dtype(1/size) first and add in input order. Bound:
# K * eps(dtype) * sum_i |g_i / size_i| per element. Measured max K: 0.99 float32, 1.13 bfloat16.
BAG_MEAN_GRAD_BOUND_EPS = 1.5 if ON_CPU else 2.0

# per_sample_weights: torch's forward and table gradient use fma(psw, x, acc); the gradient of
# psw is a dot product in BLAS order. Bound: K * eps(dtype) * sum_i |psw_i * x_i| per element.
# Measured max K: 0.90 (float32 and bfloat16).
BAG_PSW_BOUND_EPS = 1.0 if ON_CPU else 2.0

# Bags of max_norm-renormed rows: the rows differ by RENORM_ULP, then the sum rounds. Bound:
# K * eps * sum_i |row_i| (over the bag; / size for the mean). Measured max K: 1.08.
BAG_RENORM_BOUND_EPS = 1.5 if ON_CPU else 2.0
