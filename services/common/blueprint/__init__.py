"""The blueprint language's shared machinery: the graph rules (scopes, dependency closures, node
paths), CEL expressions, sandboxed Jinja templates, and validation. The registry validates with
it before saving; the orchestrator validates at StartRun and evaluates with it while running."""
