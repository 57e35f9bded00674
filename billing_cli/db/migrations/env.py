"""Alembic environment: runs on the connection the caller opened (see billing_cli.db.migrate).

Migrations are written by hand (no autogenerate): they are the one declaration of the schema."""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection)
with context.begin_transaction():
    context.run_migrations()
