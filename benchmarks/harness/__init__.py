"""The benchmark harness behind benchmarks/compare.py (and the shared helpers of the other
benchmark scripts), one module per concern:

  common       paths, /proc/self/status readings, timing loop, the worker protocol
  checkpoints  benchmark configs and their random checkpoints
  counts       prefill FLOPs and decode bytes per token
  workload     prompts and synthetic images / videos
  libraries    one adapter per measured library
  runs         the timing and vision-memory measurements (worker side)
  machine      bandwidth and GEMM probes, the CPU
  worker       the worker's task dispatch
  options      the command line
  orchestrate  the runs, their order, the snapshots
  summary      rates, fractions of the limits, target verdicts
  report       json, markdown and plot

Every module imports only the standard library at top level: workers run under
PaddleFormers' venv, which has neither torch nor this package.
"""
