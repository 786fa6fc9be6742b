"""What every `apex` sub-command shares: JSON on stdout, one-line errors on stderr."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Iterator

import typer


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn expected failures into one clear stderr line and exit code 1 (no traceback)."""
    from apex_models.runtime.bundle import BundleError
    from apex_models.runtime.store import StoreError

    try:
        yield
    except (BundleError, StoreError, FileNotFoundError, NotADirectoryError, PermissionError,
            ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
