"""Run the cloud service: with a database URL (production) or a private PostgreSQL (a laptop).

`apex serve` and `serving/app.py` both come here. With no APEX_DATABASE_URL the server
starts its own cluster in APEX_DATA_DIR (apex_models.cloud.postgres) and, on the first
start, makes an operator and writes that operator's token to `<data dir>/operator-token`
(mode 600): the one way in on a laptop, printed nowhere.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pydantic import SecretStr

from apex_models.cloud.settings import Settings

TOKEN_FILE = "operator-token"


def first_operator(url: str, data_dir: Path) -> Path | None:
    """On an empty database, create an operator and write its token to a mode-600 file."""
    from apex_models.cloud import auth
    from apex_models.cloud.db import migrate, open_pool

    migrate(url)
    pool = open_pool(url, 1)
    try:
        with pool.connection() as conn:
            if conn.execute("SELECT count(*) AS n FROM users").fetchone()["n"]:
                return None
            token = auth.new_token()
            auth.ensure_operator(conn, token)
    finally:
        pool.close()
    path = data_dir / TOKEN_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return path


def app_from_env():
    """The ASGI app from APEX_* settings (needs APEX_DATABASE_URL): `uvicorn --factory` target."""
    from apex_models.cloud.app import create_app

    return create_app(Settings())


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8765, log_level: str = "info") -> None:
    """Start uvicorn; with no database URL, a private PostgreSQL runs for as long as the server."""
    import uvicorn

    from apex_models.cloud.app import _load_embedder, create_app
    from apex_models.cloud.postgres import LocalPostgres

    embedder = _load_embedder(settings)  # a bad bundle fails here, before any database starts
    local = None
    if settings.database_url is None:
        local = LocalPostgres(settings.data_dir)
        url = local.start()
        print(f"[apex serve] private PostgreSQL in {local.cluster} (Unix socket only)", file=sys.stderr)
        settings = settings.model_copy(update={"database_url": SecretStr(url)})
        made = first_operator(url, local.data_dir)
        if made:
            print(f"[apex serve] first start: an operator token was written to {made} (mode 600)", file=sys.stderr)
    try:
        uvicorn.run(create_app(settings, embedder=embedder), host=host, port=port, log_level=log_level)
    finally:
        if local is not None:
            local.stop()
