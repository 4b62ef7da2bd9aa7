"""The cluster's tables in PostgreSQL: which node holds which slot (under
a lease), and which node holds which session (so that the leader can close
the sessions of a node that died). Both are created if missing; neither
holds personal data."""

from __future__ import annotations

__all__ = ["CLUSTER_DDL"]

CLUSTER_DDL = """
CREATE TABLE IF NOT EXISTS cluster_nodes (
    slot        integer PRIMARY KEY CHECK (slot BETWEEN 10 AND 99),
    node_id     text NOT NULL,
    url         text NOT NULL,
    expires_at  timestamptz NOT NULL,
    -- set once the leader has recorded node_lost for this holder
    lost_noted  boolean NOT NULL DEFAULT false
);
CREATE TABLE IF NOT EXISTS cluster_sessions (
    session_id  text PRIMARY KEY,
    node_id     text NOT NULL,
    slot        integer NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS cluster_sessions_node ON cluster_sessions (node_id);
"""
