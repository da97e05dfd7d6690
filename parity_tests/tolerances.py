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

# jaxembed visualize: a word's vector is the float32 mean of its pieces' rows (segment_sum /
# count) against torch's emb(ids).mean(0) on CPU. Measured: bit-exact for 1-4 pieces on CPU;
# elsewhere the segment sum's order is the backend's (not measured here): 4 eps of float32.
WORD_MEAN_RTOL = 0.0 if ON_CPU else 4 * 1.1920929e-07
# Cosine similarity (numpy: unit rows, then dot) against torch's F.cosine_similarity, which
# divides by the product of the norms: different roundings of values in [-1, 1]. Measured max
# 2.4e-7 (2 eps of float32) on the synthetic table; bound 4 eps.
COSINE_ATOL = 4 * 1.1920929e-07
