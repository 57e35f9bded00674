"""The jobs: each takes a transaction factory and its options, does its work, returns a result with a summary."""
