"""Server settings, from APEX_* environment variables (or keyword arguments in tests).

Production sets APEX_DATABASE_URL to its PostgreSQL; with none, `apex serve` starts a
private cluster in APEX_DATA_DIR (see apex_models.cloud.postgres).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the server reads; every limit is a setting so a deployment can tune it."""

    model_config = SettingsConfigDict(env_prefix="APEX_", extra="forbid")

    database_url: SecretStr | None = Field(None, description="libpq URL or key=value string; none: a private "
                                                            "cluster in data_dir")
    data_dir: Path = Field(Path(".apex-cloud"), description="where the private cluster lives when no URL is set")
    bundle: Path | None = Field(None, description="bundle folder whose embedder the server uses")
    precision: str | None = Field(None, description="fp32 or int8; default: the manifest's choice")
    bootstrap_token: SecretStr | None = Field(None, description="an operator token created at start-up if unknown")
    pool_size: int = Field(8, ge=1, le=200)
    max_body_bytes: int = Field(1_000_000, ge=1024, description="larger request bodies get 413")
    max_text_chars: int = Field(32_000, ge=1)
    rate_limit_per_minute: float = Field(1200, gt=0, description="sustained requests per token (or per client "
                                                                 "address when unauthenticated)")
    rate_limit_burst: int = Field(200, ge=1)
    embedder_threads: int = Field(1, ge=1)
    ray_embedder: bool = Field(False, description="embed through the Ray Serve deployment instead of in-process")
    ray_app_name: str = "apex-embedder"

    @field_validator("database_url", "bundle", "precision", "bootstrap_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """`APEX_BUNDLE=` in a shell means "not set", not "the current folder"."""
        return None if value == "" else value
