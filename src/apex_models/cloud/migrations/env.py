"""Alembic environment: migrations run online against the connection string the caller gives.

`apex_models.cloud.db.migrate(url)` sets `config.attributes["url"]`; there is no
alembic.ini because the migrations ship inside the package and the server runs them.
Every server process migrates on start, so the migration holds an advisory lock: the
first process upgrades, the others wait and then find the schema current.
"""

from __future__ import annotations

import psycopg
from alembic import context
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

url = context.config.attributes["url"]
engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(url), poolclass=NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, transactional_ddl=True)
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('apex_models.cloud migrations'))"))
        context.run_migrations()
