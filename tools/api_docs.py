"""Build the API reference (HTML, with pdoc) from the public modules' docstrings.

::

    python tools/api_docs.py [-o build/api] [MODULE ...]   # what `make docs` runs

Documented: ``meshlib`` (its ``__all__``), ``meshlib.errors``, ``meshlib.policy``,
``meshlib.testing`` and every module of ``meshlib.integrations``. Any warning pdoc raises
while building (a name in ``__all__`` that does not resolve, a module that fails to import,
an annotation it cannot evaluate, ...) is printed and makes the build exit 1, so that
tests/test_api_docs.py fails on it; the HTML is written either way. So is a cross-reference
that links nowhere: pdoc renders ``:class:`X``` (``:func:``, ``:meth:``, ...) as a link
when ``X`` names a documented object from where it is written, and as plain code, silently,
when it does not (a name only imported there, or written relative to the wrong module); a
reference to an object the reference documents that is left unlinked on its page is
reported as a warning too.

``meshlib`` imports its server-side names (``serve``, ``MeshServer``, ``MeshMiddleware``,
...) on first use (a module ``__getattr__``, so a client-only service never loads uvicorn);
pdoc reads only a module's ``__dict__``, so they are resolved here first.
"""

from __future__ import annotations

import argparse
import html
import importlib
import re
import sys
import warnings
from pathlib import Path

MODULES = (
    "meshlib",
    "meshlib.errors",
    "meshlib.policy",
    "meshlib.testing",
    "meshlib.integrations",
)

# pdoc's own pattern (pdoc.docstrings.rst); a function or method is rendered with "()".
_ROLE = re.compile(r"(?::py)?:(mod|func|data|const|class|meth|attr|exc|obj):`([^`]+)`")


def _resolve_lazy_exports(modules: tuple[str, ...]) -> None:
    for name in modules:
        module = importlib.import_module(name)
        namespace = vars(module)
        for export in getattr(module, "__all__", ()):
            if export not in namespace and hasattr(module, export):
                namespace[export] = getattr(module, export)


def build(output: Path, modules: tuple[str, ...] = MODULES) -> list[str]:
    """Write the reference into ``output``; return the warnings, one line each."""
    import pdoc
    import pdoc.render

    pdoc.render.configure(docformat="restructuredtext", show_source=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _resolve_lazy_exports(modules)
        pdoc.pdoc(*modules, output_directory=output)
        found = [f"{w.category.__name__}: {w.message}".splitlines()[0] for w in caught]
        found += _unlinked_references(output, modules)
    return found


def _walk(doc: object) -> list[object]:
    import pdoc.doc

    if isinstance(doc, pdoc.doc.Module):
        members = [m for m in doc.members.values() if not isinstance(m, pdoc.doc.Module)]
    elif isinstance(doc, pdoc.doc.Class):
        members = list(doc.own_members)
    else:
        members = []
    return [doc, *(d for member in members for d in _walk(member))]


def _unlinked_references(output: Path, modules: tuple[str, ...]) -> list[str]:
    """Cross-references to a documented object that pdoc left unlinked on their page.

    A reference to a module or object the reference does not document (the library's
    internals) cannot link and is not reported.
    """
    import pdoc.doc
    import pdoc.extract

    pages = {}
    for name in pdoc.extract.walk_specs(list(modules)):
        pages[name] = _walk(pdoc.doc.Module(importlib.import_module(name)))
    documented = {getattr(d, "fullname", "") for docs in pages.values() for d in docs}
    short = {full.rpartition(".")[2] for full in documented}
    found = []
    for name, docs in pages.items():
        rendered = (output / (name.replace(".", "/") + ".html")).read_text(encoding="utf-8")
        for doc in docs:
            for kind, target in _ROLE.findall(getattr(doc, "docstring", "")):
                bare = target.lstrip("~")
                if bare not in documented and ("." in bare or bare not in short):
                    continue
                shown = target + ("()" if kind in ("func", "meth") else "")
                if f"<code>{html.escape(shown)}</code>" in rendered:
                    found.append(f"{name}: :{kind}:`{target}` links nowhere")
    return sorted(set(found))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build meshlib's API reference with pdoc.")
    parser.add_argument(
        "-o", "--output", type=Path, default=Path("build/api"), help="default: build/api"
    )
    parser.add_argument(
        "modules", nargs="*", default=list(MODULES), help=f"default: {' '.join(MODULES)}"
    )
    args = parser.parse_args(argv)
    try:
        found = build(args.output, tuple(args.modules))
    except ImportError as exc:
        print(f"api-docs: cannot import a module to document: {exc}", file=sys.stderr)
        return 1
    for line in found:
        print(f"api-docs warning: {line}", file=sys.stderr)
    if found:
        print(f"api-docs: {len(found)} warning(s); reference in {args.output}", file=sys.stderr)
        return 1
    print(f"api-docs: reference in {args.output}/index.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
