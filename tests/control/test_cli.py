"""meshctl without a server: flags and help, version, completion, output, missing extras."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from typing import Any

import pytest
import yaml

from meshlib_control import cli, commands
from meshlib_control.cli_parser import subparsers
from meshlib_control.completion import completion_script

ROOT_CMD = [sys.executable, "-m", "meshlib_control"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ROOT_CMD, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def all_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    return [("meshctl", cli._parser()), *subparsers(cli._parser())]


def test_every_flag_of_every_command_has_help_and_a_plain_metavar() -> None:
    """No flag without help text, and no metavar leaking a dest like DATA_DIR_SERVE."""
    missing, leaking = [], []
    for name, parser in all_parsers():
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            flag = f"{parser.prog} {'/'.join(action.option_strings)}"
            if not action.help:
                missing.append(flag)
            if action.nargs != 0 and not action.choices:
                shown = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
                if "_" in shown:
                    leaking.append(f"{flag} {shown}")
        assert name
    assert missing == []
    assert leaking == []


@pytest.mark.parametrize(
    "argv",
    [
        ["--data-dir", "/srv/a", "--control", "https://c:1", "--debug", "get", "services"],
        ["get", "services", "--data-dir", "/srv/a", "--control", "https://c:1", "--debug"],
        ["get", "--debug", "services", "--control", "https://c:1", "--data-dir", "/srv/a"],
    ],
)
def test_global_flags_before_or_after_the_subcommand(argv: list[str]) -> None:
    args = cli._parser().parse_args(argv)
    assert (args.data_dir, args.control, args.debug) == ("/srv/a", "https://c:1", True)
    assert (args.command, args.kind) == ("get", "services")


def test_a_global_flag_before_the_subcommand_is_not_reset_after_it() -> None:
    args = cli._parser().parse_args(["--data-dir", "/srv/b", "control", "serve"])
    assert args.data_dir == "/srv/b"
    assert not hasattr(args, "data_dir_serve")


def test_data_dir_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHCTL_DATA_DIR", raising=False)
    monkeypatch.delenv("MESH_DATA_DIR", raising=False)
    assert cli._parser().parse_args(["check"]).data_dir == ".mesh"
    monkeypatch.setenv("MESH_DATA_DIR", "/srv/mesh")
    assert cli._parser().parse_args(["check"]).data_dir == "/srv/mesh"
    monkeypatch.setenv("MESHCTL_DATA_DIR", "/srv/ctl")  # the more specific one wins
    assert cli._parser().parse_args(["check"]).data_dir == "/srv/ctl"
    assert cli._parser().parse_args(["check", "--data-dir", "x"]).data_dir == "x"


def test_one_output_flag_everywhere() -> None:
    """Every command that prints data takes -o table|yaml|json, default table."""
    parser = cli._parser()
    for argv in (
        ["get", "services"],
        ["apply", "-f", "x.yaml"],
        ["delete", "tp", "a"],
        ["token", "create", "--service", "a"],
        ["token", "revoke", "--service", "a"],
        ["stat"],
        ["check"],
        ["explain", "a"],
    ):
        assert parser.parse_args(argv).output == "table", argv
        for choice in ("yaml", "json"):
            assert parser.parse_args([*argv, "-o", choice]).output == choice


def help_text(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        cli.main([*argv, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_help_shows_defaults_and_examples(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(capsys, "control", "serve")
    assert "--listen HOST:PORT" in text
    assert "(default: 127.0.0.1:7443)" in text
    assert "DATA_DIR_SERVE" not in text
    assert "examples:" in text
    assert "examples:" in help_text(capsys, "apply")


def expected_version() -> str:
    try:
        return dist_version("inproc-mesh")
    except PackageNotFoundError:
        return "0+unknown"


def test_version_command_and_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["version"]) == 0
    assert capsys.readouterr().out == f"meshctl {expected_version()}\n"
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"meshctl {expected_version()}\n"
    assert run("version").stdout == f"meshctl {expected_version()}\n"  # python -m meshlib_control


def complete(words: list[str]) -> list[str]:
    """What bash offers for the last of *words* with meshctl's generated completion."""
    script = completion_script(cli._parser(), "bash")  # what `meshctl completion bash` prints
    quoted = " ".join(json.dumps(w) for w in words)
    program = (
        f"{script}\nCOMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; _meshctl; "
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    out = subprocess.run(
        ["bash", "-c", program], capture_output=True, text=True, timeout=30, check=True
    )
    return sorted(line for line in out.stdout.splitlines() if line)


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_bash_completion_completes_commands_flags_and_choices() -> None:
    assert complete(["meshctl", "con"]) == ["control"]
    assert complete(["meshctl", "control", "s"]) == ["serve"]
    assert "--xds-listen" in complete(["meshctl", "control", "serve", "--x"])
    assert complete(["meshctl", "stat", "--out"]) == ["--output"]
    assert complete(["meshctl", "stat", "-o", ""]) == ["json", "table", "yaml"]
    assert complete(["meshctl", "get", "--data-dir", "/x", "--dry"]) == []
    assert complete(["meshctl", "apply", "--dry"]) == ["--dry-run"]
    bash = run("completion", "bash")
    assert bash.returncode == 0 and bash.stdout == completion_script(cli._parser(), "bash")
    zsh = run("completion", "zsh")
    assert zsh.returncode == 0 and "bashcompinit" in zsh.stdout


def run_without(module: str, *argv: str, debug: bool = False) -> subprocess.CompletedProcess[str]:
    """meshctl with *module* unimportable, as in an environment without the extra."""
    code = (
        f"import sys; sys.modules[{module!r}] = None\n"
        "from meshlib_control.cli import main\n"
        f"raise SystemExit(main({list(argv) + (['--debug'] if debug else [])!r}))"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_a_missing_grpc_for_the_ads_server_names_the_extra(tmp_path: Any) -> None:
    result = run_without("grpc", "control", "serve", "--data-dir", str(tmp_path / "d"),
                         "--listen", "127.0.0.1:0", "--xds-listen", "127.0.0.1:0")  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: meshctl control serve needs the [control] extra (missing module 'grpc'): "
        "pip install 'inproc-mesh[control]'"
    ]


def test_a_missing_extra_is_one_line_naming_the_install(tmp_path: Any) -> None:
    result = run_without("uvicorn", "control", "serve", "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: meshctl control serve needs the [control] extra (missing module 'uvicorn'): "
        "pip install 'inproc-mesh[control]'"
    ]
    assert not (tmp_path / "d").exists()  # refused before anything was written
    loud = run_without("uvicorn", "control", "serve", "--data-dir", str(tmp_path / "d"), debug=True)
    assert loud.returncode == 1
    assert "Traceback" in loud.stderr and "pip install 'inproc-mesh[control]'" in loud.stderr


class FakeClient:
    """Answers one admin path with a canned body (the server side is tested elsewhere)."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.answers[path]


def _stats(services: list[tuple[str, str]], edges: list[tuple[str, str]]) -> dict[str, Any]:
    def entry(rps: float) -> dict[str, Any]:
        return {"rps": rps, "successRate": 1.0, "p50Ms": 1.0, "p95Ms": 2.0, "p99Ms": 3.0,
                "totalRequests": 10}  # fmt: skip

    return {
        "services": [{"service": s, "namespace": ns, **entry(1.0)} for s, ns in services],
        "edges": [
            {
                "source": src,
                "sourceNamespace": "default",
                "service": dst,
                "namespace": "default",
                **entry(0.5),
            }
            for src, dst in edges
        ],
        "windowSeconds": 10.0,
        "instances": {"scraped": 3, "failed": 0},
    }


def test_stat_labels_each_edge_with_its_own_destination(capsys: pytest.CaptureFixture[str]) -> None:
    """orders has two callers: both edges end at orders (the old table chained them)."""
    answer = _stats(
        [("frontend", "default"), ("orders", "default")],
        [("shop", "orders"), ("frontend", "orders"), ("shop", "frontend")],
    )
    args = argparse.Namespace(service=None, namespace=None, output="table")
    commands._cmd_stat(FakeClient({"/v1/admin/stats": answer}), args)  # type: ignore[arg-type]
    labels = [line.split("  ")[1].strip() for line in capsys.readouterr().out.splitlines()
              if line.startswith("  ")]  # fmt: skip
    assert labels == ["shop -> frontend", "shop -> orders", "frontend -> orders"]


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_stat_machine_output_is_the_answer(output: str, capsys: pytest.CaptureFixture[str]) -> None:
    answer = _stats([("orders", "default")], [])
    args = argparse.Namespace(service=None, namespace=None, output=output)
    commands._cmd_stat(FakeClient({"/v1/admin/stats": answer}), args)  # type: ignore[arg-type]
    text = capsys.readouterr().out
    assert (json.loads(text) if output == "json" else yaml.safe_load(text)) == answer


def test_get_services_prints_a_table_not_python_lists(capsys: pytest.CaptureFixture[str]) -> None:
    items = [
        {"name": "orders", "namespace": "shop", "instances": 2, "modes": ["library", "sidecar"]}
    ]
    args = argparse.Namespace(kind="services", name=None, namespace=None, output="table")
    commands._cmd_get(FakeClient({"/v1/admin/services": {"items": items}}), args)  # type: ignore[arg-type]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "INSTANCES", "MODES"]
    assert lines[1].split() == ["shop", "orders", "2", "library,sidecar"]
    assert "[" not in lines[1]
