"""Shared test fixtures' machinery: real Postgres, Redis, service processes and Envoy."""
