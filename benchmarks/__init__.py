"""The benchmarks: one script per question, each runnable alone or all together.

    python -m benchmarks                 # every benchmark, in order (``make bench``)
    python -m benchmarks.pending_scale   # one of them
    python -m benchmarks --smoke         # every benchmark at a tiny N

Each prints a table (the baseline measured in the same run, our figure, the ratio) and
writes JSON under ``benchmarks/results/``. They are not tests: ``tests/test_benchmarks.py``
runs each at a tiny N so that they cannot rot.
"""
