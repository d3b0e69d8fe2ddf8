"""Writing a run's files, and its section of docs/benchmarks.md."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.report.markdown import markdown
from benchmarks.report.plots import plots
from benchmarks.report.summary import summarise
from benchmarks.report.targets import ISSUE, TARGETS

__all__ = ["DOCS_BEGIN", "DOCS_END", "update_docs", "write_outputs"]

DOCS_BEGIN = "<!-- data-plane-results:begin (written by python -m benchmarks.run) -->"
DOCS_END = "<!-- data-plane-results:end -->"


def update_docs(docs: Path, document: dict[str, Any], results_link: str) -> bool:
    """Replace the generated section of *docs* with this run's tables and plots.

    Returns False (and changes nothing) when the page lacks the markers.
    """
    text = docs.read_text()
    if DOCS_BEGIN not in text or DOCS_END not in text:
        return False
    body = markdown(document, document["summary"]).split("\n", 2)[2]  # drop the title
    body = re.sub(r"^(#+) ", r"#\1 ", body, flags=re.MULTILINE)  # one level down
    images = "\n".join(f"![{name}]({results_link}/{name})" for name in document.get("plots", []))
    section = (
        f"{DOCS_BEGIN}\n\nFull tables: [data_plane.md]({results_link}/data_plane.md); raw "
        f"runs and summary: [data_plane.json]({results_link}/data_plane.json)."
        f"\n\n{images}\n\n{body}\n{DOCS_END}"
    )
    head, rest = text.split(DOCS_BEGIN, 1)
    tail = rest.split(DOCS_END, 1)[1]
    docs.write_text(head + section + tail)
    return True


def write_outputs(document: dict[str, Any], out: Path) -> dict[str, Any]:
    """Summarise *document* and write JSON, Markdown and plots into *out*."""
    summary = summarise(document)
    document["summary"] = summary
    document[f"targets_of_issue_{ISSUE}"] = [asdict(target) for target in TARGETS]
    (out / "data_plane.json").write_text(json.dumps(document, indent=1, default=str) + "\n")
    (out / "data_plane.md").write_text(markdown(document, summary))
    document["plots"] = [p.name for p in plots(document, summary, out)]
    (out / "data_plane.json").write_text(json.dumps(document, indent=1, default=str) + "\n")
    return summary
