"""Run engine benchmark: per-node overhead and run throughput against plain asyncio, DBOS and
LangGraph with its Postgres checkpointer, on one embedded Postgres."""
