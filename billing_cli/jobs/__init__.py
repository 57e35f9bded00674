"""The jobs: each takes settings, a session factory and adapters, and returns a result object."""
