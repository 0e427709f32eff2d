"""The HTTP API: FastAPI routes over the services. Public API under /v1, agents' under /agent/v1."""
