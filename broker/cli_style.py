"""What the three commands' argument parsers share: `--version` from the
package metadata, and help that shows every option's default."""

from __future__ import annotations

import argparse
import importlib.metadata
import tomllib
from pathlib import Path

from broker.layered_config import FlagDefault

__all__ = ["add_version", "finish_parser", "package_version", "pyproject_version"]

PACKAGE = "consentry"
# The source tree's pyproject.toml: the version of a checkout run without
# being installed (PYTHONPATH=. python -m broker).
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def package_version(pyproject: Path = PYPROJECT) -> str:
    """The installed version of consentry, else the one `pyproject` names,
    else a note saying neither could be found."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        pass
    return pyproject_version(pyproject) or "(version unknown: not installed; run `make venv`)"


def pyproject_version(pyproject: Path) -> str | None:
    try:
        with pyproject.open("rb") as f:
            version = tomllib.load(f).get("project", {}).get("version")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return version if isinstance(version, str) else None


class _Version(argparse._VersionAction):
    """argparse's "version" action, but the version is looked up when asked
    for: reading the package's metadata costs every start-up otherwise."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(f"{parser.prog.split()[0]} {package_version()}")  # stdout, as argparse's
        parser.exit()


def add_version(parser: argparse.ArgumentParser) -> None:
    """`--version` prints the program's name (not the sub-command's) and version."""
    parser.add_argument("--version", action=_Version,
                        help="print the program's version and exit")


def _shown(value: object) -> str:
    if isinstance(value, FlagDefault):
        return _shown(value.value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value)
    return str(value)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help, unless the help already
    says its default, or there is none to say (off, unset)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if isinstance(default, FlagDefault):
            default = default.value
        if ("default" in text or default in (None, False, argparse.SUPPRESS, [])
                or not action.option_strings):
            return text
        # Escaped for argparse's own %-formatting of help strings.
        return f"{text} (default: {_shown(default).replace('%', '%%')})"


class RawDescriptionDefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter,
                                          DefaultsHelpFormatter):
    """The same, for a parser whose description or epilog is laid out by hand."""


def finish_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give `parser` and every sub-command's parser the defaults formatter
    (keeping hand-laid-out descriptions as they are) and `--version`;
    returns `parser`."""
    if "--version" not in parser._option_string_actions:
        add_version(parser)
    # formatter_class may be any callable (a functools.partial, say): only a
    # class can be a subclass.
    if (isinstance(parser.formatter_class, type)
            and issubclass(parser.formatter_class, argparse.RawDescriptionHelpFormatter)):
        parser.formatter_class = RawDescriptionDefaultsHelpFormatter
    else:
        parser.formatter_class = DefaultsHelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                finish_parser(sub)
    return parser
