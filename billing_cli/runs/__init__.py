"""The run layer: what every command and job shares around its work (settings, database, lock, record, metrics, notifications)."""
