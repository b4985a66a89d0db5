"""The local stack: embedded Postgres + pgvector, Redis, the three services and Envoy, started
by `make run` (`python -m services.stack`). The same launchers back the test fixtures."""
