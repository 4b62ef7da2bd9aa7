"""The JSON line formatter: one line per record, nothing in it that acts on a
terminal, the record's own fields kept."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from broker.logformat import JsonLineFormatter, setup_logging


def _record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("consentry.broker", logging.WARNING, __file__, 1, message,
                               args, None)
    record.__dict__.update(extra)
    return record


def test_a_hostile_string_stays_on_one_inert_line() -> None:
    hostile = "evil\x1b[2J\nFAKE line\u202eabc\x07"
    line = JsonLineFormatter().format(_record("engineer %s", hostile, engineer=hostile))
    assert "\n" not in line and line.isascii()
    assert all(ch >= " " for ch in line)
    entry = json.loads(line)
    assert entry["message"] == f"engineer {hostile}" and entry["engineer"] == hostile
    assert (entry["level"], entry["logger"]) == ("warning", "consentry.broker")


def test_fields_json_cannot_carry_are_written_as_text() -> None:
    entry = json.loads(JsonLineFormatter().format(
        _record("x", misses=3, ok=True, nothing=None, where=("a", 1), obj=object)))
    assert (entry["misses"], entry["ok"], entry["nothing"], entry["where"]) == (
        3, True, None, ["a", 1])
    assert entry["obj"] == "<class 'object'>"


def test_an_exception_is_a_field_not_more_lines() -> None:
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        record = _record("failed")
        record.exc_info = sys.exc_info()
    line = JsonLineFormatter().format(record)
    assert "\n" not in line and "boom" in json.loads(line)["exception"]


def test_setup_logging_chooses_the_format() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        out = io.StringIO()
        setup_logging("json", out)
        logging.getLogger("consentry.test").info("hello", extra={"port": 1})
        assert json.loads(out.getvalue())["port"] == 1
        out = io.StringIO()
        setup_logging("text", out)
        logging.getLogger("consentry.test").info("hello")
        assert out.getvalue().rstrip().endswith("INFO consentry.test: hello")
        with pytest.raises(ValueError, match="text, json"):
            setup_logging("xml")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
