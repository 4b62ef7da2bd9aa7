"""A node's URL, as the node table holds it and a `moved` answer carries
it: checked the same way where it is configured (`serve --node-url`) and
where a console is about to follow it, since a console must never be sent
to an address it would not otherwise trust (plain ws://, a user name in
the URL, a path of the sender's choosing)."""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["MAX_NODE_URL", "node_url_problem"]

MAX_NODE_URL = 200


def node_url_problem(url: str) -> str | None:
    """Why `url` is no node URL (None when it is one): wss://HOST[:PORT]."""
    if len(url) > MAX_NODE_URL:
        return f"is longer than {MAX_NODE_URL} characters"
    if not url.isascii() or not url.isprintable() or any(c.isspace() for c in url):
        return "must be printable ASCII without spaces"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"is not a URL ({exc})"
    if parts.scheme != "wss":
        return "must begin with wss:// (TLS, verified against the broker's CA)"
    if not parts.hostname or parts.username is not None or parts.password is not None:
        return "must name a host, and no user or password"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "must be only wss://HOST:PORT (no path, query or fragment)"
    if port == 0:
        return "must not use port 0"
    return None
