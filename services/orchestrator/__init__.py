"""The orchestrator service: durable runs of blueprints, and semantic memory."""
