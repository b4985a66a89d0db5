"""iceOS server: the registry, orchestrator and sandbox services and what they share."""
