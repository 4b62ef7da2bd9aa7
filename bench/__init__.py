"""consentry's performance harness: `make bench` (full) or `make bench-smoke`."""
