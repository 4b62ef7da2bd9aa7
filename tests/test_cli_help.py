"""Every command's help: a version, a help text for every option, and the
default shown wherever there is one."""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.__main__ import build_parser as agent_parser
from broker.cli import build_parser as broker_parser
from broker.cli_style import PYPROJECT, finish_parser, pyproject_version
from broker.layered_config import FlagDefault
from console.__main__ import build_parser as console_parser

PARSERS = {"consentry-broker": broker_parser, "consentry-agent": agent_parser,
           "consentry-console": console_parser}
VERSION = importlib.metadata.version("consentry")


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
             ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """The parser and every sub-command's, with the words that reach it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


def options(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        if not isinstance(action, argparse._HelpAction | argparse._VersionAction
                          | argparse._SubParsersAction):
            yield action


def meaningful(default: object) -> bool:
    if isinstance(default, FlagDefault):  # a setting the config layers may fill
        default = default.value
    return default not in (None, False, argparse.SUPPRESS, [])


def all_options() -> Iterator[tuple[str, tuple[str, ...], argparse.ArgumentParser,
                                    argparse.Action]]:
    for prog, build in PARSERS.items():
        for path, parser in commands(build()):
            for action in options(parser):
                yield prog, path, parser, action


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_version_comes_from_the_package(prog: str) -> None:
    module = {"consentry-broker": "broker", "consentry-agent": "agent",
              "consentry-console": "console"}[prog]
    result = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{prog} {VERSION}\n", "")


def test_every_sub_command_takes_version(capsys: pytest.CaptureFixture[str]) -> None:
    seen = []
    for prog, build in PARSERS.items():
        for path, _ in commands(build()):
            with pytest.raises(SystemExit) as exit_:
                build().parse_args([*path, "--version"])
            out = capsys.readouterr().out
            seen.append((" ".join((prog, *path)), exit_.value.code, out))
    assert len(seen) >= 20
    assert [s for s in seen if s[1:] != (0, f"{s[0].split()[0]} {VERSION}\n")] == []


def test_agent_transfers_takes_version_too() -> None:
    # `transfers` is parsed apart from the agent's main parser.
    result = subprocess.run([sys.executable, "-m", "agent", "transfers", "--version"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stdout) == (0, f"consentry-agent {VERSION}\n")


def test_an_uninstalled_tree_reads_its_version_from_pyproject(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "consentry"\nversion = "9.8.7"\n')
    assert pyproject_version(pyproject) == "9.8.7"
    assert pyproject_version(tmp_path / "missing.toml") is None
    pyproject.write_text("[project\n")
    assert pyproject_version(pyproject) is None
    # The real tree's pyproject says what the installed metadata says.
    assert pyproject_version(PYPROJECT) == VERSION


def test_every_option_has_a_help_text_with_its_default() -> None:
    missing, no_default = [], []
    for prog, path, parser, action in all_options():
        where = " ".join((prog, *path, action.dest))
        if not action.help or action.help == argparse.SUPPRESS:
            missing.append(where)
            continue
        text = parser._get_formatter()._expand_help(action)
        if meaningful(action.default) and "default" not in text:
            no_default.append(f"{where}: {text}")
    assert missing == [] and no_default == []


def test_serve_help_names_listen_cert_and_key_defaults() -> None:
    text = dict(commands(broker_parser()))[("serve",)].format_help()
    text = " ".join(text.split())
    assert "(default: 127.0.0.1:8443)" in text
    assert "(default: certs/broker.crt)" in text and "(default: certs/broker.key)" in text


def test_join_shows_the_connection_defaults_too() -> None:
    join = dict(commands(console_parser()))[("join",)]
    text = " ".join(join.format_help().split())
    assert "(default: wss://127.0.0.1:8443)" in text and "(default: certs/ca.crt)" in text


def test_plain_join_explains_a_mistyped_code_without_calling_the_broker() -> None:
    # Port 9 (discard) has no broker: a join that got as far as connecting
    # would fail with exit 4 and "cannot reach the broker".
    result = subprocess.run(
        [sys.executable, "-m", "console", "join", "581-128-45", "--broker", "wss://127.0.0.1:9",
         "--identity", "/nonexistent"],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result
    assert result.stderr == ("consentry-console: that code has 5 secret digits after 581; a "
                             "code has 6, like 4821-193-775: please check it with the customer\n")


def test_plain_join_refuses_a_broker_url_without_tls_before_anything_else() -> None:
    # Checked with the arguments: before the key is read (or its passphrase
    # asked for) and before any connection.
    result = subprocess.run(
        [sys.executable, "-m", "console", "join", "4821-193-775", "--broker",
         "ws://127.0.0.1:9", "--identity", "/nonexistent"],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result
    assert "ws:// is a connection without TLS: use wss://127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_formatter_given_as_a_callable_not_a_class_still_gets_the_defaults() -> None:
    # argparse takes any callable as formatter_class; issubclass() on one raised.
    parser = argparse.ArgumentParser(
        prog="x", formatter_class=functools.partial(argparse.HelpFormatter, width=60))
    parser.add_argument("--port", type=int, default=8443, help="where to listen")
    text = " ".join(finish_parser(parser).format_help().split())
    assert "(default: 8443)" in text
