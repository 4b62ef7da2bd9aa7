"""Settings: flags > CONSENTRY_* > file > defaults, for the three programs;
--print-config says where each came from and never shows a secret; an
unknown key in a file is an error naming the key and the file."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from broker.layered_config import (
    Resolved,
    SettingsError,
    configure_from,
    load_file,
    mark_defaults,
    render,
    resolve,
)

BIN = Path(sys.executable).parent


def test_the_first_layer_that_has_a_key_wins() -> None:
    got = resolve(["a", "b", "c", "d"], flags={"a": 1}, env={"a": 2, "b": 2},
                  file={"a": 3, "b": 3, "c": 3}, file_name="f.toml",
                  defaults={"a": 4, "b": 4, "c": 4, "d": 4})
    assert got == {"a": Resolved(1, "flag"), "b": Resolved(2, "environment CONSENTRY_B"),
                   "c": Resolved(3, "file f.toml"), "d": Resolved(4, "default")}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="demo")
    p.add_argument("--port", type=int, default=8443)
    p.add_argument("--data-dir", type=Path, default=Path("var"))
    p.add_argument("--loud", action="store_true")
    p.add_argument("--witness", type=Path, action="append")
    p.add_argument("--mode", choices=["a", "b"], default="a")
    p.add_argument("--token", default=None)
    p.add_argument("--config", type=Path)
    p.add_argument("--print-config", action="store_true")
    return p


KEYS = ("port", "data_dir", "loud", "witness", "mode", "token")


def _run(argv: list[str], environ: dict[str, str], file: Path
         ) -> tuple[argparse.Namespace, str | None]:
    parser = _parser()
    mark_defaults(parser, KEYS)
    args = parser.parse_args(argv)
    shown = configure_from(args, parser, KEYS, program="demo", default_file=file,
                           environ=environ, secrets=("token",))
    return args, shown


def test_flags_beat_environment_beat_file_beat_defaults(tmp_path: Path) -> None:
    file = tmp_path / "demo.toml"
    file.write_text('port = 1\ndata_dir = "~/d"\nloud = true\nwitness = ["w1", "w2"]\n'
                    'mode = "b"\n')
    args, shown = _run(["--port", "3"], {"CONSENTRY_PORT": "2", "CONSENTRY_MODE": "a"}, file)
    assert shown is None
    assert (args.port, args.mode, args.loud) == (3, "a", True)
    assert args.data_dir == Path("~/d").expanduser()
    assert args.witness == [Path("w1"), Path("w2")]
    args, _ = _run([], {"CONSENTRY_PORT": "2", "CONSENTRY_LOUD": "no"}, file)
    assert (args.port, args.loud) == (2, False)
    args, _ = _run([], {}, tmp_path / "absent.toml")
    assert (args.port, args.data_dir, args.loud, args.witness, args.mode) == (
        8443, Path("var"), False, None, "a")


def test_a_repeatable_flag_given_on_the_command_line_wins_and_adds_up(tmp_path: Path) -> None:
    """`--witness A --witness B` collects both (argparse appends to the
    default in place: a stand-in default there was a traceback)."""
    file = tmp_path / "demo.toml"
    file.write_text('witness = ["w1"]\n')
    args, _ = _run(["--witness", "a", "--witness", "b"], {}, file)
    assert args.witness == [Path("a"), Path("b")]
    args, _ = _run([], {}, file)
    assert args.witness == [Path("w1")]


def test_print_config_says_where_each_came_from_and_hides_secrets(tmp_path: Path) -> None:
    file = tmp_path / "demo.toml"
    file.write_text('token = "hunter2"\nport = 1\n')
    _, shown = _run(["--print-config", "--mode", "b"], {"CONSENTRY_LOUD": "1"}, file)
    assert shown is not None and "hunter2" not in shown
    lines = shown.splitlines()
    assert f"port = 1  # file {file}" in lines
    assert "mode = \"b\"  # flag" in lines
    assert "loud = true  # environment CONSENTRY_LOUD" in lines
    assert "data_dir = \"var\"  # default" in lines
    assert f"# token = (set, not shown)  # file {file}" in lines
    assert "# witness is not set  # default" in lines


@pytest.mark.parametrize(("text", "env", "message"), [
    ("prot = 1\n", {}, "unknown setting 'prot'"),
    ("port = \"many\"\n", {}, "port: invalid literal"),
    ("mode = \"c\"\n", {}, "mode: 'c' is not one of a, b"),
    ("loud = 3\n", {}, "loud: must be true or false"),
    ("port = [1]\n", {}, "port: must be a string or a number, not a list"),
    ("port = \n", {}, "is not valid TOML"),
    ("", {"CONSENTRY_LOUD": "maybe"}, "CONSENTRY_LOUD: must be true or false"),
])
def test_a_bad_file_or_variable_is_named(tmp_path: Path, text: str, env: dict[str, str],
                                         message: str) -> None:
    file = tmp_path / "demo.toml"
    file.write_text(text)
    with pytest.raises(SettingsError, match=message) as exc:
        _run([], env, file)
    if text:
        assert str(file) in str(exc.value)


def test_a_config_file_asked_for_must_exist(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="no config file at"):
        load_file(tmp_path / "nope.toml", KEYS, required=True)
    assert load_file(tmp_path / "nope.toml", KEYS, required=False) == {}


def test_render_quotes_what_it_prints() -> None:
    text = render("demo", {"alias": Resolved("a\"b\x1b[2J", "flag")}, "x")
    assert 'alias = "a\\"b\\u001b[2J"  # flag' in text.splitlines()


# -- the three programs, as subprocesses ----------------------------------------


def _cli(*argv: str, env: dict[str, str] | None = None, cwd: Path
         ) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd)}
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env={**base, **(env or {})}, check=False)


def test_broker_print_config_from_file_environment_and_flag(tmp_path: Path) -> None:
    conf = tmp_path / "broker.toml"
    conf.write_text('listen = "0.0.0.0:9443"\naudit_max_mb = 5\ndata_dir = "/srv/c"\n')
    result = _cli("consentry-broker", "serve", "--config", str(conf), "--print-config",
                  "--data-dir", "here", env={"CONSENTRY_AUDIT_MAX_MB": "7"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f'listen = "0.0.0.0:9443"  # file {conf}' in lines
    assert "audit_max_mb = 7  # environment CONSENTRY_AUDIT_MAX_MB" in lines
    assert 'data_dir = "here"  # flag' in lines
    assert 'log_format = "text"  # default' in lines


def test_broker_refuses_an_unknown_key_without_a_traceback(tmp_path: Path) -> None:
    conf = tmp_path / "broker.toml"
    conf.write_text('lisen = "0.0.0.0:9443"\n')
    result = _cli("consentry-broker", "serve", "--config", str(conf), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{conf}: unknown setting 'lisen'" in result.stderr
    assert "Traceback" not in result.stderr
    result = _cli("consentry-broker", "serve", "--config", str(tmp_path / "no.toml"),
                  cwd=tmp_path)
    assert result.returncode == 2 and "no config file at" in result.stderr


def test_agent_and_console_read_their_xdg_files(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg" / "consentry"
    xdg.mkdir(parents=True)
    (xdg / "agent.toml").write_text('alias = "front desk"\nshare_user = true\n')
    (xdg / "console.toml").write_text('user = "alice"\nbroker = "wss://b.example:443"\n')
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "CONSENTRY_BROKER": "wss://env:1"}
    agent = _cli("consentry-agent", "--print-config", env=env, cwd=tmp_path)
    assert agent.returncode == 0, agent.stderr
    assert f'alias = "front desk"  # file {xdg / "agent.toml"}' in agent.stdout.splitlines()
    assert 'broker = "wss://env:1"  # environment CONSENTRY_BROKER' in agent.stdout
    console = _cli("consentry-console", "join", "4821-193-775", "--print-config",
                   "--broker", "wss://flag:2", env=env, cwd=tmp_path)
    assert console.returncode == 0, console.stderr
    lines = console.stdout.splitlines()
    assert f'user = "alice"  # file {xdg / "console.toml"}' in lines
    assert 'broker = "wss://flag:2"  # flag' in lines
    (xdg / "console.toml").write_text("passphrase = 'x'\n")
    bad = _cli("consentry-console", "--print-config", env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "unknown setting 'passphrase'" in bad.stderr
    assert "Traceback" not in bad.stderr and "'x'" not in bad.stderr
