"""The run engine: the worker (claims, leases), executions (scheduling, node kinds, retries) and
the checkpoint writer (batched, fenced, idempotent commits)."""
