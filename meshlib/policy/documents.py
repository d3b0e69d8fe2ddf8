"""Loading policy text (multi-document YAML, or JSON) into mappings.

PyYAML is imported here, and only when text is loaded: a workload that never reads YAML
(policy arrives from the control service as JSON) never imports a YAML parser. The safe
loader builds plain data only; the C loader is used when PyYAML has it (faster, and it
recurses in C rather than in Python frames). Every failure, including nesting deep enough
to exhaust the stack and integers past ``int``'s conversion limit, becomes a
:class:`~meshlib.errors.PolicyError` naming the document.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from meshlib.errors import PolicyError
from meshlib.policy.fields import _kind_of

__all__ = ["load_documents"]


def load_documents(text: str) -> list[dict[str, Any]]:
    """Parse multi-document YAML (or JSON) text into mappings, skipping empty documents.

    Raises:
        PolicyError: a syntax error (path ``documents[i]``, reason with line and column) or a
            document that is not a mapping.
    """
    import yaml

    docs: list[dict[str, Any]] = []
    try:
        for raw in _safe_load_all(text):
            if raw is None:
                continue
            if not isinstance(raw, Mapping):
                raise PolicyError(
                    f"documents[{len(docs)}]", f"must be a mapping, got {_kind_of(raw)}"
                )
            docs.append(dict(raw))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(f"documents[{len(docs)}]", f"invalid YAML: {where}{problem}") from exc
    except RecursionError as exc:
        raise PolicyError(f"documents[{len(docs)}]", "invalid YAML: nested too deeply") from exc
    except ValueError as exc:  # an integer of more than 4300 digits (int's conversion limit)
        raise PolicyError(f"documents[{len(docs)}]", f"invalid YAML: {exc}") from exc
    return docs


def _safe_load_all(text: str) -> Iterator[Any]:
    import yaml

    # The C loader when PyYAML has it: faster, and it recurses in C, not in Python frames.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return iter(yaml.load_all(text, Loader=loader))
