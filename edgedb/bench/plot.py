"""A picture of a benchmark: latency histogram, latency over time, stages stacked.

matplotlib is optional (``pip install matplotlib``); without it ``plot_results`` says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

from edgedb._extras import import_optional
from edgedb._files import atomic_output
from edgedb.bench.runner import BenchmarkResult
from edgedb.errors import InvalidInputError

STAGE_COLORS = {"preprocess": "#4c72b0", "infer": "#dd8452", "boxes": "#55a868"}


def _pyplot():
    matplotlib = import_optional("matplotlib", "--plot", "pip install matplotlib")
    matplotlib.use("Agg")  # files only: no display needed
    return import_optional("matplotlib.pyplot", "--plot", "pip install matplotlib")


def plot_results(results: Sequence[BenchmarkResult], path: Union[str, Path]) -> Path:
    """Writes a PNG of one or more results (compare mode draws them side by side)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InvalidInputError(f"the plot is a PNG: give a .png file name, not {path.name}")
    if not path.parent.is_dir():
        raise InvalidInputError(f"the folder {path.parent} for the plot does not exist")
    plt = _pyplot()
    figure, (histogram, timeline, stages) = plt.subplots(1, 3, figsize=(16, 4.8))
    for result in results:
        latencies = [q.latency_ms for q in result.queries]
        if not latencies:
            continue
        histogram.hist(latencies, bins=min(40, max(5, len(latencies) // 3)), alpha=0.6, label=result.label)
        timeline.plot([q.start for q in result.queries], latencies, ".", markersize=3, label=result.label)
    histogram.set(title="Latency distribution", xlabel="latency (ms)", ylabel="queries")
    timeline.set(title="Latency over the run", xlabel="time since start (s)", ylabel="latency (ms)")
    for axis in (histogram, timeline):
        if len(results) > 1:
            axis.legend(fontsize=8)
    labels = [r.label for r in results]
    bottoms = [0.0] * len(results)
    for stage, color in STAGE_COLORS.items():
        medians = []
        for result in results:
            summary = result.stage_summaries().get(stage)
            medians.append(summary.mean if summary else 0.0)
        if any(medians):
            stages.bar(labels, medians, bottom=bottoms, color=color, label=stage)
            bottoms = [b + m for b, m in zip(bottoms, medians)]
    stages.set(title="Mean time per query by stage", ylabel="ms")
    stages.legend(fontsize=8)
    stages.tick_params(axis="x", labelrotation=15, labelsize=8)
    figure.suptitle("edgedb bench: " + ", ".join(f"{r.label} ({r.settings['backend']})" for r in results), fontsize=10)
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=110)
    plt.close(figure)
    return path
