"""Helpers for the cloud tests: a fresh database per test module, an app with an operator,
and a few users with tokens."""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from typing import Any, Iterator

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

OPERATOR_TOKEN = "apex_" + "operator-token-for-tests-only-0123456789abcdef"


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new empty database on the test server; dropped afterwards."""
    name = f"apex_test_{uuid.uuid4().hex[:12]}"
    admin = make_conninfo(server_url, dbname=conninfo_to_dict(server_url).get("dbname", "postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(server_url, dbname=name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def running_app(database_url: str, embedder: Any, **settings: Any) -> Iterator[Any]:
    """The app in-process (lifespan run: migrated, operator made) behind a TestClient."""
    from fastapi.testclient import TestClient

    from apex_models.cloud.app import create_app
    from apex_models.cloud.settings import Settings

    config = Settings(database_url=database_url, bootstrap_token=OPERATOR_TOKEN, **settings)
    with TestClient(create_app(config, embedder=embedder), raise_server_exceptions=False) as http:
        yield http


def client_for(http: Any, token: str):
    from apex_models.cloud.client import CloudClient

    return CloudClient(token=token, http=http)


def new_user(http: Any, name: str, operator: bool = False):
    """(user id, a client holding that user's token), made by the operator."""
    created = client_for(http, OPERATOR_TOKEN).create_user(name, operator=operator)
    return created.user.id, client_for(http, created.token.token)
