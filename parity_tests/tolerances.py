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

# Sparse optimizers (test_sparse.py), whole trajectories (12 steps, padding, duplicates, an
# all-padding batch), in units of eps(float32) * (|torch value| + 1) per element.
# Plain sparse SGD is bit-exact on CPU (per-entry FMA scatter in input order): no tolerance.
# SGD momentum: torch applies its uncoalesced sparse buffer entry by entry, we keep a dense
# buffer (same mathematics, other rounding). Measured max 14 in the suite (nesterov, 100
# ids a step); 18.3 with another seed.
SPARSE_MOMENTUM_EPS = 24.0
# SparseAdam / Adagrad: torch's MKL float32 sqrt (1 ulp off on ~20% of elements), float32 step
# sizes without x64, torch's sort order for 17+ duplicates. Measured max 0.87 in the suite,
# 0.94 with another seed.
# With torch's sqrt substituted and x64 on they are bit-exact on CPU (tested).
SPARSE_ADAPTIVE_EPS = 2.0
