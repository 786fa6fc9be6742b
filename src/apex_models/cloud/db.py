"""Connections and schema migrations for the cloud service (psycopg 3, a connection pool, Alembic)."""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_IN_PROCESS = threading.Lock()  # Alembic loads env.py as a module: not safe from two threads at once


def alembic_config(url: str) -> Config:
    """Alembic's config for the migrations shipped in this package (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = url
    return config


def migrate(url: str, revision: str = "head") -> None:
    """Bring the database at `url` to `revision` (idempotent: a current schema is left alone).

    Safe from several processes at once (env.py takes an advisory lock) and threads (a lock here).
    """
    with _IN_PROCESS:
        command.upgrade(alembic_config(url), revision)


def open_pool(url: str, size: int) -> ConnectionPool:
    """A pool whose connections return rows as dicts; waits until the first one connects."""
    pool = ConnectionPool(url, min_size=1, max_size=size, kwargs={"row_factory": dict_row}, open=False,
                          timeout=30)
    pool.open(wait=True, timeout=30)
    return pool
