"""``edgedb bench``: a trtexec-style benchmark of the whole detector, on every backend.

``run_benchmark`` times queries (preprocessing, inference with its copies, box formation)
and ``run_comparison`` interleaves several contenders; ``report`` prints trtexec's summary
with the detector's stages, ``plot_results`` draws it (matplotlib, optional).
"""

from edgedb.bench.report import report
from edgedb.bench.runner import BenchmarkResult, Query, bare_loop, run_benchmark, run_comparison
from edgedb.bench.stats import Summary, percentile

__all__ = ["BenchmarkResult", "Query", "Summary", "bare_loop", "percentile", "report", "run_benchmark",
           "run_comparison"]
