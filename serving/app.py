"""Server entry point of the cloud memory service (production: a PostgreSQL by URL).

    APEX_DATABASE_URL=postgresql://... APEX_BUNDLE=export/bundles/default \
        uvicorn --factory apex_models.cloud.server:app_from_env --host 0.0.0.0 --port 8765 --workers 4
    python serving/app.py --host 0.0.0.0 --port 8765      # the same, one process

Every setting is an APEX_* environment variable (serving/settings.example.env). With no
APEX_DATABASE_URL this starts a private PostgreSQL like `apex serve` does.
"""

from __future__ import annotations

import argparse

from apex_models.cloud.server import serve
from apex_models.cloud.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    serve(Settings(), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
