"""PostgreSQL: engine and transactions, migrations, the embedded default server, and the stores (all SQL lives here)."""
