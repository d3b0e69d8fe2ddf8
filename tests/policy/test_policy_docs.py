from __future__ import annotations

import re
from pathlib import Path

from meshlib.policy.decode import decode_documents, encode_resource
from meshlib.policy.model import KINDS

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "policy-reference.md"


def test_every_example_in_the_policy_reference_decodes() -> None:
    """Each YAML example of docs/policy-reference.md is valid and together they cover every kind."""
    blocks = re.findall(r"```yaml\n(.*?)```", REFERENCE.read_text(encoding="utf-8"), re.S)
    resources = [r for block in blocks for r in decode_documents(block)]
    assert {r.kind for r in resources} == set(KINDS)


def test_reference_documents_every_canonical_field() -> None:
    """Every field name of the canonical encoding appears in the policy reference."""
    text = REFERENCE.read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    names: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            names.update(node)
            for key, value in node.items():
                if key != "labels":  # label names are data, not fields
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for block in blocks:
        for res in decode_documents(block):
            walk(encode_resource(res))
    spans = " ".join(re.findall(r"`([^`\n]+)`", text))
    missing = sorted(n for n in names if not re.search(rf"\b{re.escape(n)}\b", spans))
    assert missing == []
