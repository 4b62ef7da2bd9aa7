"""Several broker nodes on one PostgreSQL (DESIGN.md, "Cluster").

- `lease`: the pure rules - slots, nameplate prefixes, when a lease is held.
- `schema`: the node and session tables.
- `nodes`: the node table in PostgreSQL (claim a slot, renew, look one up).
- `membership`: the task that keeps this node's lease, and says when it is lost.
- `leader`: the one node that runs the cluster-wide jobs (advisory lock).
- `health`: what `/healthz` answers.
"""
