"""The benchmark harness behind benchmarks/compare.py (and the helpers the other benchmark
scripts share), one module per concern; the module map is in benchmarks/README.md.

Every module imports only the standard library at top level: workers run under
PaddleFormers' venv, which has neither torch nor this package.
"""
