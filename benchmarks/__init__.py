"""``python -m benchmarks``: the jaxembed benchmark harness (delegates to ``jaxembed bench``).

The harness lives in the library (``jaxembed._src.tools.bench``) so that ``jaxembed bench`` works from
an installed package; results of full runs are kept in this directory (RESULTS.md, results/).
"""
