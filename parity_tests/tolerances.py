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
# The difference is bounded by K[dtype] * eps(dtype) * sum_i |g_i / count| per element. Measured
# K on CPU (V=8, D=37, 120 ids, 5 seeds; and V=50, 4000 ids: 0.67): float32 1.07, float16 1.14,
# bfloat16 1.43 (half types round after every add in both frameworks).
SGBF_BOUND_EPS = {"float32": 1.1, "float64": 1.1, "float16": 1.15, "bfloat16": 1.45}



def reorder_bound_eps(counts):
    """Extra bound, in eps(dtype) * sum_i |g_i|, for a row summed in another order than torch's.

    Two recursive sums of the same n terms in different orders differ by at most
    2 (n - 1) u sum|g_i| = (n - 1) eps sum|g_i| (Higham, Accuracy and Stability, 4.2). Zero on CPU,
    where XLA scatters in torch's order. Not measured on an accelerator yet.
    """
    import numpy as np

    if ON_CPU:
        return np.zeros(np.shape(counts))
    return np.maximum(np.asarray(counts, np.float64) - 1, 0)

# max_norm renorm: ulp distance of the renormed table from torch's. torch's CPU norm is a
# vectorized reduction whose summation order we do not emulate, and without x64 the scale
# max_norm/(norm+1e-7) is computed in float32 rather than double. Measured on CPU over 6000 rows
# (D in {5, 17, 64}, max_norm in {0.3, 1, 1.3, 6}): the max ulp per norm_type below; pow-based
# norms amplify the sum's rounding by 1/p. bfloat16/float16 (norm rounded to the table dtype, as torch): 0 ulp
# over 2000 rows; 1 allowed for a tie in the rounding of the norm.
RENORM_ULP_F32 = {1.0: 9, 2.0: 4, 3.0: 5, float("inf"): 3, 0.0: 2, 0.5: 16}
RENORM_ULP = {"float32": max(RENORM_ULP_F32.values()), "bfloat16": 1, "float16": 1}

# Whole training runs where bit-exactness is not reached (max_norm, scale_grad_by_freq): the
# largest |ours - torch| over the table, in units of eps(dtype) * max|table| (ulp distances blow
# up on entries near zero, so trajectories use this scale instead).
# Measured on CPU, 10 SGD steps, D in {5, 8, 37}: 2.07 (max |diff| 9.5e-7).
TRAJECTORY_EPS = {"float32": 2.5}


def relative_to_table(got, want) -> float:
    """max|got - want| / (eps * max|want|): the error in units of the table's largest ulp."""
    import numpy as np

    want64 = np.asarray(want, np.float64)
    scale = float(np.finfo(np.asarray(want).dtype).eps) * max(float(np.abs(want64).max()), 1e-30)
    return float(np.abs(np.asarray(got, np.float64) - want64).max()) / scale


# jaxembed visualize: a word's vector is the float32 mean of its pieces' rows (segment_sum /
# count) against torch's emb(ids).mean(0) on CPU. Measured: bit-exact for 1-4 pieces on CPU;
# elsewhere the segment sum's order is the backend's (not measured here): 4 eps of float32.
WORD_MEAN_RTOL = 0.0 if ON_CPU else 4 * 1.1920929e-07
# Cosine similarity (numpy: unit rows, then dot) against torch's F.cosine_similarity, which
# divides by the product of the norms: different roundings of values in [-1, 1]. Measured max
# 2.4e-7 (2 eps of float32) on the synthetic table; bound 4 eps.
COSINE_ATOL = 4 * 1.1920929e-07


# Vocab-parallel tables (test_sharding.py), 8 host devices, float32. A batch split over a "data"
# axis sums each row's gradient per shard, then across shards: another order than one device's.
# Bound: K * eps * sum_i |g_i| per element; measured K: 0.81.
SHARDED_GRAD_BOUND_EPS = 2.0
# max_norm on a sharded table against one device: the norms are compiled in another context
# (the shard_map body), last-bit differences; measured 3 ulp (rows and table).
SHARDED_RENORM_ULP = 4
# 5 SGD steps with max_norm against the same steps on one device (the renorm differences above
# carried through); measured 19 ulp on every mesh (one device vs torch: 27 ulp).
SHARDED_TRAJECTORY_ULP = 24
# attend's per-device dot blocks the D-sum its own way: K * eps * sum_d |q_d w_d|; measured K 1.43.
SHARDED_ATTEND_BOUND_EPS = 2.0
