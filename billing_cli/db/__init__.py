"""PostgreSQL: models, engine and transactions, migrations, and the embedded default server."""
