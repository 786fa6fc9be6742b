"""Alembic environment: migrations run online against the connection string the caller gives.

`apex_models.cloud.db.migrate(url)` sets `config.attributes["url"]`; there is no
alembic.ini because the migrations ship inside the package and the server runs them.
"""

from __future__ import annotations

import psycopg
from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

url = context.config.attributes["url"]
engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(url), poolclass=NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()
