"""The machinery under the conv types: hand-written Triton kernels, their eager equivalents, the
first-use check that picks between them (health.py, dispatch.py), and the per-sample paths of the
aggregated conv with their tuner. The layers above compute the same functions through it.
"""
