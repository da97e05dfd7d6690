"""Every tolerance of the parity suite, in one place, per backend and dtype.

The measured figures live in the library (``jaxembed/_src/tolerances.py``) because
``jaxembed parity`` uses the same ones at run time; this module selects those of the current JAX
backend and adds the few that only tests use. Units are ulp of the compared dtype unless named
otherwise; see the library module for what each figure measures and where it was measured.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxembed._src import tolerances as _lib

BACKEND = _lib.backend_key(jax.default_backend())  # "cpu", "gpu" or "tpu"
ON_CPU = BACKEND == "cpu"

# Forward gather: bit-exact on every backend and dtype.
FORWARD_ULP = _lib.FORWARD_ULP

# Dense gradient without scale_grad_by_freq: bit-exact on CPU (input-order scatter-add).
GRAD_EXACT = _lib.grad_exact(BACKEND)

# scale_grad_by_freq: K[dtype] * eps(dtype) * sum_i |g_i / count| per element.
SGBF_BOUND_EPS = _lib.SGBF_BOUND_EPS


def reorder_bound_eps(counts):
    """Per-row extra bound (in eps * sum|g|) for a summation order other than torch's."""
    return _lib.reorder_bound_eps(BACKEND, counts)


# max_norm renorm, ulp of the renormed rows/table, per dtype; per norm type for float32/64.
RENORM_ULP = _lib.RENORM_ULP[BACKEND]
RENORM_ULP_F32 = {p: _lib.renorm_ulp(BACKEND, "float32", p) for p in _lib.RENORM_ULP_BY_NORM["float32"]}

# Training trajectories, normwise: max|diff| <= K * eps * max|torch table|, per optimizer family.
TRAJECTORY_EPS = _lib.TRAJECTORY_EPS[BACKEND]

# One Adam step from an identical state: ADAM_STEP_REL * lr + ADAM_STEP_ULP ulp of the parameter.
ADAM_STEP_ULP = _lib.ADAM_STEP_ULP[BACKEND]
ADAM_STEP_REL = _lib.ADAM_STEP_REL[BACKEND]


def relative_to_table(got, want) -> float:
    """max|got - want| / (eps * max|want|): the error in units of the table's largest ulp."""
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
# visualize --method output on a tiny random BERT (hidden 16, 2 layers) against transformers,
# one word at a time: pooled vectors measured max 2.4e-7 abs, cosines 1.8e-7 (CPU); bound
# 4 eps of float32 for the cosines, 1e-6 for the vectors (|x| <= 3). The MiniLM test uses the
# issue's 1e-5 (measured 4.2e-7 mean, 3.6e-7 cls).
ENCODER_OUTPUT_ATOL = 1e-6
ENCODER_COSINE_ATOL = 4 * 1.1920929e-07

# Vocab-parallel tables (test_sharding.py), 8 host devices, float32. A batch split over a "data"
# axis sums each row's gradient per shard, then across shards: another order than one device's.
# Bound: K * eps * sum_i |g_i| per element; measured K: 0.81.
SHARDED_GRAD_BOUND_EPS = 1.0
# max_norm on a sharded table against one device: the norms are compiled in another context
# (the shard_map body), last-bit differences; measured 3 ulp (rows and table).
SHARDED_RENORM_ULP = 3
# 5 SGD steps with max_norm against the same steps on one device (the renorm differences above
# carried through); measured 19 ulp on every mesh (one device vs torch: 27 ulp).
SHARDED_TRAJECTORY_ULP = 20
# attend's per-device dot blocks the D-sum its own way: K * eps * sum_d |q_d w_d|; measured K 1.43.
SHARDED_ATTEND_BOUND_EPS = 1.5


# Sparse optimizers (test_sparse.py), whole trajectories (12 steps, padding, duplicates, an
# all-padding batch), in units of eps(float32) * (|torch value| + 1) per element.
# Plain sparse SGD is bit-exact on CPU (per-entry FMA scatter in input order): no tolerance.
# SGD momentum: torch applies its uncoalesced sparse buffer entry by entry, we keep a dense
# buffer (same mathematics, other rounding). Measured max 14 in the suite (nesterov, 100
# ids a step); 18.3 with another seed.
SPARSE_MOMENTUM_EPS = 20.0
# SparseAdam / Adagrad: torch's MKL float32 sqrt (1 ulp off on ~20% of elements), float32 step
# sizes without x64, torch's sort order for 17+ duplicates. Measured max 0.87 in the suite,
# 0.94 with another seed.
# With torch's sqrt substituted and x64 on they are bit-exact on CPU (tested).
SPARSE_ADAPTIVE_EPS = 1.0

# EmbeddingBag -------------------------------------------------------------------------------
# bfloat16 sum/mean without padding_idx: torch takes FBGEMM's fast path, which rounds the
# float32 bag sum to bfloat16 with ties away from zero instead of to even (torch-semantics.md
# §7, exp7b): 1 ulp on exact ties. With padding_idx torch rounds to even and we are bit-exact.
BAG_BF16_FAST_PATH_ULP = 1

# Mean (and scale_grad_by_freq) gradients: torch adds fma(g, dtype(1/size), acc) per term, in
# its sorted-id order; we round g * dtype(1/size) first and add in input order. Bound:
# K * eps(dtype) * sum_i |g_i / size_i| per element. Measured max K: 0.99 float32, 1.28 bfloat16.
BAG_MEAN_GRAD_BOUND_EPS = 1.3 if ON_CPU else 2.0

# per_sample_weights: torch's forward and table gradient use fma(psw, x, acc); the gradient of
# psw is a dot product in BLAS order. Bound: K * eps(dtype) * sum_i |psw_i * x_i| per element.
# Measured max K: 0.90 (float32 and bfloat16).
BAG_PSW_BOUND_EPS = 1.0 if ON_CPU else 2.0

# Bags of max_norm-renormed rows: the rows differ by RENORM_ULP, then the sum rounds. Bound:
# K * eps * sum_i |row_i| (over the bag; / size for the mean). Measured max K: 1.08.
BAG_RENORM_BOUND_EPS = 1.1 if ON_CPU else 2.0

# Sum-mode gradients: torch adds in its sorted-id order, we in input order. Bound:
# K * eps(dtype) * sum_i |g_i| per element. Measured max K over test_embedding_bag.py: float32
# 0.96, bfloat16 1.51 (it rounds after every add in both orders). float64/float16 not measured:
# the two-order bound 2.
BAG_SUM_GRAD_BOUND_EPS = {"float32": 1.0, "float64": 2.0, "bfloat16": 1.55, "float16": 2.0}

# MiniLM encoder (test_bert.py), float32 against float64 runs of both frameworks. The JAX
# float32 error (vs JAX float64) must be <= K x torch's float32 error (vs torch float64)
# + floor, per tensor, for the rms and the max of the error. Measured CPU worst over test_bert's
# batch and 16 random ones (parity_tests/measure_tolerances.py encoder): rms 1.41, max 2.28
# (the max of a few hundred thousand errors is noisy; XLA:CPU's float32 matmul is ~2.7x less
# accurate than torch's MKL one at K=1536, the source of the rms ratio; with flax's default
# use_fast_variance=True LayerNorm the rms ratio reached 1.95). rms: the 2x; max: 2.5.
# floor: 1e-7 absolute (under 1 ulp of float32 at 1). GPU/TPU (precision="highest"): not measured.
ENCODER_F32_VS_F64 = {"rms": 2.0, "max": 2.5, "floor": 1e-7}
# The two float64 runs: max|jax - torch| <= K * eps(float64) * max|torch|. Measured CPU max K 63.6
# (6.6e-14 absolute on the test batch, where max|x| = 5.8).
ENCODER_F64_EPS = 70
# Fine-tuning the word table through the encoder (5 SGD steps, lr 0.1): max|jax - torch| <=
# K * eps(float32) * max|W| after every step. Measured CPU max 0.24 (each step moves the table
# by ~1.3e4 eps * max|W|). GPU/TPU not measured: 2, the bound.
ENCODER_FINETUNE_EPS = 1.0 if ON_CPU else 2.0
