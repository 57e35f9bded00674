"""Alembic environment: runs on the connection the caller opened (see billing_cli.db.migrate)."""

from alembic import context

from billing_cli.db.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, compare_type=True)
with context.begin_transaction():
    context.run_migrations()
