"""Cross-framework verification: does a JAX port compute what its torch model computes?

Judged against float64, not a guessed tolerance: each tensor's float32 error against the torch
model run in float64 must be at most ``k`` times torch's own float32 error (plus a few ulp).
See the guide docs/guides/verification.md, "Verify your own port". torch is imported only when a
comparison runs.

* :func:`compare` -> :class:`Report`: forward (every module's output), gradients, K optimizer
  steps; a table, JSON, ``assert_passed()``.
* :func:`assert_forward_close`, :func:`assert_gradients_close`, :func:`assert_training_close`:
  the same as pytest assertions.
* :func:`param_map` -> :class:`ParamMap`, :func:`copy_weights`: torch ``state_dict`` names to
  NNX / Linen paths with the layout conversions.
* :func:`sgd`, :func:`adam`, :func:`adamw`, :func:`sparse_adam`, :func:`adagrad`:
  :class:`OptimizerPair` (``torch.optim`` and the matching optax / ``jaxembed.sparse``).
* :class:`Criterion`, :func:`judge`, :class:`Verdict`, :func:`ulp_distance`: the comparison
  arithmetic on its own.
"""

from jaxembed._src.testing.compare import Criterion, Verdict, judge, ulp_distance
from jaxembed._src.testing.optimizers import (
    OptimizerPair,
    adagrad,
    adam,
    adamw,
    sgd,
    sparse_adam,
)
from jaxembed._src.testing.param_map import (
    CONV,
    IDENTITY,
    TRANSPOSE,
    Entry,
    Layout,
    ParamMap,
    copy_weights,
    param_map,
)
from jaxembed._src.testing.report import Report, Row
from jaxembed._src.testing.verify import (
    assert_forward_close,
    assert_gradients_close,
    assert_training_close,
    compare,
)

__all__ = [
    "CONV",
    "Criterion",
    "Entry",
    "IDENTITY",
    "Layout",
    "OptimizerPair",
    "ParamMap",
    "Report",
    "Row",
    "TRANSPOSE",
    "Verdict",
    "adagrad",
    "adam",
    "adamw",
    "assert_forward_close",
    "assert_gradients_close",
    "assert_training_close",
    "compare",
    "copy_weights",
    "judge",
    "param_map",
    "sgd",
    "sparse_adam",
    "ulp_distance",
]
