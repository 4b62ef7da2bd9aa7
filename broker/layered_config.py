"""Settings from four places, for all three programs: flags > environment
(`CONSENTRY_*`) > a TOML file > the built-in defaults.

Each program's argument parser stays the one list of what can be set: a
setting is an option's `dest` (`data_dir`, `listen`), its TOML key is the same
name, its variable is CONSENTRY_ and the name in capitals (CONSENTRY_DATA_DIR),
and a value from the file or the environment goes through the option's own
`type` (so `audit_max_mb = 0` is refused as `--audit-max-mb 0` is).

`resolve` is the precedence itself, pure; `apply` is the argparse glue: after
`mark_defaults(parser)`, an option's default is a `FlagDefault`, which is how
a value typed on the command line is told from one that was not.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ENV_PREFIX", "FlagDefault", "Resolved", "SettingsError", "apply", "configure_from",
           "load_file", "mark_defaults", "render", "resolve", "settings_or_exit",
           "xdg_config_file"]

ENV_PREFIX = "CONSENTRY_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class SettingsError(Exception):
    """A config file or variable the program cannot use; the message names it."""


class FlagDefault:
    """An option's default, standing in for it until the layers are resolved."""

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return str(self.value)


@dataclass(frozen=True)
class Resolved:
    value: object
    source: str  # "flag", "environment CONSENTRY_X", "file PATH", "default"


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def resolve(keys: Iterable[str], *, flags: Mapping[str, object], env: Mapping[str, object],
            file: Mapping[str, object], file_name: str, defaults: Mapping[str, object]
            ) -> dict[str, Resolved]:
    """Each key's value and where it came from: the first layer that has it."""
    out = {}
    for key in keys:
        if key in flags:
            out[key] = Resolved(flags[key], "flag")
        elif key in env:
            out[key] = Resolved(env[key], f"environment {env_name(key)}")
        elif key in file:
            out[key] = Resolved(file[key], f"file {file_name}")
        else:
            out[key] = Resolved(defaults.get(key), "default")
    return out


def xdg_config_file(name: str, environ: Mapping[str, str] = os.environ) -> Path:
    """$XDG_CONFIG_HOME/consentry/NAME (~/.config by default)."""
    base = environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(base) / "consentry" / name


def load_file(path: Path, known: Iterable[str], *, required: bool) -> dict[str, object]:
    """The settings in TOML file `path`: {} if it is absent and not `required`.
    A key the program does not know is an error naming it and the file (a
    typo must not silently leave a setting at its default)."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        if required:
            raise SettingsError(f"no config file at {path}") from None
        return {}
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path} is not valid TOML: {exc}") from None
    allowed = set(known)
    for key in data:
        if key not in allowed:
            raise SettingsError(f"{path}: unknown setting {key!r} (known: "
                                f"{', '.join(sorted(allowed))})")
    return data


# -- argparse glue ------------------------------------------------------------


def _walk(parser: argparse.ArgumentParser) -> Iterable[argparse.Action]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _walk(sub)
        else:
            yield action


def mark_defaults(parser: argparse.ArgumentParser, keys: Iterable[str]) -> dict[
        str, argparse.Action]:
    """Wrap the defaults of the options named by `keys` (in `parser` and its
    sub-commands) in FlagDefault; returns each key's action, for its type."""
    wanted, actions = set(keys), dict[str, argparse.Action]()
    for action in _walk(parser):
        if action.dest in wanted:
            actions.setdefault(action.dest, action)
            # A repeatable option (`--witness FILE` twice) adds to its default
            # in place: it keeps None, which then means "not on the command line".
            if action.default is not argparse.SUPPRESS and not isinstance(
                    action.default, FlagDefault) and not _accumulates(action):
                action.default = FlagDefault(action.default)
    return actions


def _accumulates(action: argparse.Action) -> bool:
    return isinstance(action, argparse._AppendAction | argparse._AppendConstAction
                      | argparse._CountAction | argparse._ExtendAction)


def _convert(action: argparse.Action, raw: object, where: str) -> object:
    """`raw` (a TOML value, or a variable's text) as the option would take it."""
    convert: Callable[[str], object] = action.type or str  # type: ignore[assignment]
    try:
        if isinstance(action, argparse._StoreTrueAction):
            if isinstance(raw, str) and raw.lower() in _TRUE | _FALSE:
                return raw.lower() in _TRUE
            if isinstance(raw, bool):
                return raw
            raise ValueError("must be true or false")
        if isinstance(raw, bool) or isinstance(raw, dict):
            raise ValueError("must be a string or a number")
        if isinstance(action, argparse._AppendAction):
            items = raw.split(os.pathsep) if isinstance(raw, str) else raw
            if not isinstance(items, list):
                raise ValueError("must be a list")
            return [convert(str(item)) for item in items if str(item)]
        if isinstance(raw, list):
            raise ValueError("must be a string or a number, not a list")
        value = convert(str(raw))
        if isinstance(value, Path):
            value = value.expanduser()  # a file or a variable has no shell to do it
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        raise SettingsError(f"{where}: {exc}") from None
    if action.choices is not None and value not in action.choices:
        raise SettingsError(f"{where}: {value!r} is not one of "
                            f"{', '.join(map(str, action.choices))}")
    return value


def apply(args: argparse.Namespace, actions: Mapping[str, argparse.Action], *,
          environ: Mapping[str, str], file: Mapping[str, object], file_name: str
          ) -> dict[str, Resolved]:
    """Replace every FlagDefault in `args` by the value the layers give, and
    return what each setting this command takes is, and where it came from."""
    keys = [k for k in actions if hasattr(args, k)]
    flags, defaults = {}, {}
    for key in keys:
        value = getattr(args, key)
        if isinstance(value, FlagDefault):
            defaults[key] = value.value
        elif value is None and _accumulates(actions[key]):
            defaults[key] = None
        else:
            flags[key] = value
    env = {k: _convert(actions[k], environ[env_name(k)], env_name(k))
           for k in keys if environ.get(env_name(k))}
    from_file = {k: _convert(actions[k], file[k], f"{file_name}: {k}")
                 for k in keys if k in file}
    resolved = resolve(keys, flags=flags, env=env, file=from_file, file_name=file_name,
                       defaults=defaults)
    for key, setting in resolved.items():
        setattr(args, key, setting.value)
    return resolved


def configure_from(args: argparse.Namespace, parser: argparse.ArgumentParser,
                   keys: Iterable[str], *, program: str, default_file: Path,
                   environ: Mapping[str, str], secrets: Iterable[str] = ()) -> str | None:
    """The whole of it for one program: read `args.config` (or `default_file`
    if it exists), fill `args`, and return the --print-config text if asked."""
    keys = tuple(keys)
    actions = mark_defaults(parser, keys)
    path = args.config or default_file
    file = load_file(path, keys, required=args.config is not None)
    resolved = apply(args, actions, environ=environ, file=file, file_name=str(path))
    if not args.print_config:
        return None
    note = str(path) if path.is_file() else f"{path} (none there)"
    return render(program, resolved, note, secrets)


def settings_or_exit(args: argparse.Namespace, parser: argparse.ArgumentParser,
                     keys: Iterable[str], *, program: str, default_file: Path) -> int | None:
    """`configure_from` for a client program's `main`: the exit code when it
    is done already (--print-config printed: 0; a bad setting said: 2), else
    None and `args` filled."""
    try:
        shown = configure_from(args, parser, keys, program=program,
                               default_file=default_file, environ=os.environ)
    except SettingsError as exc:
        print(f"{program.split()[0]}: {exc}", file=sys.stderr)
        return 2
    if shown is not None:
        print(shown, end="")
        return 0
    return None


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    # JSON's escapes are TOML's for a basic string; ASCII keeps it inert.
    return json.dumps(str(value), ensure_ascii=True)


def render(program: str, resolved: Mapping[str, Resolved], file_note: str,
           secrets: Iterable[str] = ()) -> str:
    """`--print-config`: the effective settings as TOML a file could hold,
    each with where it came from. A secret is never shown, only whether it is set."""
    hidden = set(secrets)
    lines = [f"# {program}: effective settings (flags > environment {ENV_PREFIX}* > "
             "file > defaults)", f"# config file: {file_note}"]
    for key in sorted(resolved):
        setting = resolved[key]
        if key in hidden:
            shown = "(set, not shown)" if setting.value not in (None, "") else "(not set)"
            lines.append(f"# {key} = {shown}  # {setting.source}")
        elif setting.value is None or setting.value == []:
            lines.append(f"# {key} is not set  # {setting.source}")
        else:
            lines.append(f"{key} = {_toml_value(setting.value)}  # {setting.source}")
    return "\n".join(lines) + "\n"
