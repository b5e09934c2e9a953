"""`make bench`: the pipeline's performance, each figure a median of repeats next to a baseline from the same run.

One module per measurement (cold start, finalize copy, poller cost, batch, handler CPU and AWS cost); `__main__` runs
them in turn and writes the table to docs/performance.md. Figures that depend on a whole process (import time, peak
RSS, CPU) are measured in child processes of their own, started fresh for each repeat.
"""
