"""The benchmark harness behind ``jaxembed bench`` and ``python -m benchmarks``.

``timing``: interleaved rounds, median and spread; the machine's allocator/OpenMP settings.
``cases``: the contenders, operations, id distributions, bytes models and reference checks.
``report``: terminal table, JSON, markdown summary and PNG plot.
``main``: the command line and the grid loop.
"""
