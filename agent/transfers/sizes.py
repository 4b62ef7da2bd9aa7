"""Byte counts as a customer reads and types them ("1.2 MB", "2G")."""

from __future__ import annotations

import re

_UNITS = (("GB", 1000**3), ("MB", 1000**2), ("KB", 1000))
_SUFFIXES = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", re.IGNORECASE)


def format_size(count: int) -> str:
    """A size for people: "300 KB", "1.2 MB", "7 bytes" (decimal units, as
    file managers show them)."""
    for unit, scale in _UNITS:
        if count >= scale:
            value = count / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return "1 byte" if count == 1 else f"{count} bytes"


def parse_size(text: str) -> int:
    """A size a customer typed for a limit: "2G", "500M", "10GiB", "4096"
    (binary suffixes). Raises ValueError for anything else."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (use for example 500M or 2G)")
    number, suffix = match.groups()
    return int(float(number) * _SUFFIXES[suffix.upper()])
