"""What `import meshlib` loads for an HTTP-only service (issue 12's import-lightness target)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("grpc", "yaml", "meshlib_control", "opentelemetry.sdk")


def test_import_meshlib_loads_no_sdk_grpc_yaml_or_control():
    """`import meshlib` and an unstarted Mesh(...) load no gRPC, YAML, SDK or control code."""
    code = (
        "import sys, meshlib\n"
        "meshlib.Mesh(service='a', control_url='https://127.0.0.1:9', token='t', admin_port=None)\n"
        f"heavy = {HEAVY!r}\n"
        "print(sorted({m for m in sys.modules for h in heavy"
        " if m == h or m.startswith(h + '.')}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_yaml_is_imported_when_yaml_text_is_decoded():
    """Decoding YAML text still works: the parser arrives on first use."""
    code = (
        "import sys\n"
        "from meshlib.policy.decode import decode_documents\n"
        "before = 'yaml' in sys.modules\n"
        "docs = decode_documents('apiVersion: meshlib.io/v1\\nkind: PeerAuthentication\\n"
        "metadata: {name: p}\\nspec: {mode: STRICT}\\n')\n"
        "print(before, 'yaml' in sys.modules, docs[0].kind)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "PeerAuthentication"]
