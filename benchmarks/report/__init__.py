"""From raw runs to the summary, the Markdown tables and the PNG plots.

Every figure is the median over the repeats, with the spread as min-max. Differences
between modes ("added latency", "extra CPU", "extra RSS") are paired: computed within each
repeat (the modes of one repeat ran back to back), then summarised over the repeats.

Modules: :mod:`.stats` (``stat``, percentile keys), :mod:`.summary` (raw runs to the
summary), :mod:`.targets` (the issue's targets, :data:`TARGETS`, and mode (c)'s headline
figures), :mod:`.checks` (every target judged per library mode and caller: met or missed,
by how much), :mod:`.formatting`, :mod:`.markdown` and :mod:`.target_table` (Markdown),
:mod:`.plots` (PNG) and :mod:`.outputs` (the files and the docs section).
"""

from __future__ import annotations

from benchmarks.report.markdown import markdown
from benchmarks.report.outputs import update_docs, write_outputs
from benchmarks.report.summary import summarise
from benchmarks.report.targets import TARGETS

__all__ = ["TARGETS", "markdown", "summarise", "update_docs", "write_outputs"]
