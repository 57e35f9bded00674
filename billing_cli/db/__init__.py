"""PostgreSQL: models, engine and sessions, migrations, and the embedded default server."""
