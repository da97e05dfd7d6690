"""Every tolerance of the parity suite, in one place, per backend and dtype.

The figures live in the library (``jaxembed/_src/tolerances.py``) because ``jaxembed parity``
uses the same ones at run time; this module selects those of the current JAX backend. Units are
ulp of the compared dtype unless named otherwise; see the library module for what each figure
measures and where it was measured.
"""

from __future__ import annotations

import jax

from jaxembed._src import tolerances as _lib

BACKEND = _lib.backend_key(jax.default_backend())  # "cpu", "gpu" or "tpu"
ON_CPU = BACKEND == "cpu"

# Forward gather: bit-exact on every backend and dtype.
FORWARD_ULP = _lib.FORWARD_ULP

# Dense gradient without scale_grad_by_freq: bit-exact on CPU (input-order scatter-add).
GRAD_EXACT = _lib.grad_exact(BACKEND)

# scale_grad_by_freq and non-CPU summation orders: K * eps(dtype) * sum_i |g_i| per element.
SGBF_BOUND_EPS = _lib.SGBF_BOUND_EPS
REORDER_BOUND_EPS = _lib.REORDER_BOUND_EPS

# max_norm renorm, ulp of the renormed rows/table, per dtype.
RENORM_ULP = _lib.RENORM_ULP[BACKEND]

# Training trajectories, normwise: max|diff| <= K * eps * max|torch table|, per optimizer family.
TRAJECTORY_EPS = _lib.TRAJECTORY_EPS[BACKEND]

# One Adam step from an identical state: ADAM_STEP_REL * lr + ADAM_STEP_ULP ulp of the parameter.
ADAM_STEP_ULP = _lib.ADAM_STEP_ULP[BACKEND]
ADAM_STEP_REL = _lib.ADAM_STEP_REL[BACKEND]
