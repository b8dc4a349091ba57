"""Composable settings blocks, read from `REACH_`-prefixed environment variables.

Each service composes the blocks it needs into its own `BaseSettings` class by
inheritance, so every variable keeps the flat name the contract fixes
(`REACH_DATABASE_URL`, not `REACH_DATABASE__URL`). Settings are built once by the app
factory or the CLI and kept on `app.state`; nothing reads the environment at import time.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field, HttpUrl, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "REACH_"
DEFAULT_DATA_DIR = Path("reach-data")
MIN_SECRET_LENGTH = 32


class Environment(StrEnum):
    DEV = "dev"
    TEST = "test"
    PRODUCTION = "production"


class _Block(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", case_sensitive=False, frozen=True
    )


class RuntimeSettings(_Block):
    environment: Environment = Environment.DEV
    data_dir: Path = DEFAULT_DATA_DIR
    log_level: str = "INFO"
    log_json: bool = False
    # Off only in tests that drive the loops (outbox delivery, timers) by hand.
    background_tasks: bool = True


class DatabaseSettings(_Block):
    # None means SQLite in the data folder (the embedded default).
    database_url: str | None = None
    database_pool_size: int = Field(default=10, ge=1, le=200)
    database_pool_timeout_seconds: float = Field(default=30.0, gt=0)
    database_echo: bool = False


class AuthSettings(_Block):
    # HS256 secret for development and tests; when unset in dev, one is generated into
    # the data folder. Production verifies RS256 tokens against `jwt_jwks_url`.
    jwt_secret: SecretStr | None = None
    jwt_jwks_url: HttpUrl | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=300)
    jwt_jwks_cache_seconds: int = Field(default=300, ge=10)
    # Signs the short-lived tokens services present to each other's internal endpoints.
    internal_secret: SecretStr | None = None


class PeerSettings(_Block):
    """Where the other services answer when they run as separate processes."""

    triage_api_url: HttpUrl | None = None
    consult_router_url: HttpUrl | None = None
    audit_url: HttpUrl | None = None
    peer_timeout_seconds: float = Field(default=5.0, gt=0)


class OutboxSettings(_Block):
    outbox_poll_seconds: float = Field(default=2.0, gt=0)
    outbox_batch_size: int = Field(default=100, ge=1, le=1000)
    outbox_lease_seconds: float = Field(default=30.0, gt=0)
    outbox_base_backoff_seconds: float = Field(default=0.5, gt=0)
    outbox_max_backoff_seconds: float = Field(default=60.0, gt=0)
    # Audit's events are delivered in a loop of their own, after gathering this long, so
    # no offer waits for the trail (see `OutboxDelivery`). 0: at once, still on their own.
    outbox_audit_linger_seconds: float = Field(default=0.25, ge=0, le=10)


class HttpSettings(_Block):
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    websocket_max_message_bytes: int = Field(default=64 * 1024, ge=1024)
    websocket_hello_timeout_seconds: float = Field(default=10.0, gt=0)
    # A socket is closed (1001, the client reconnects with `after`) after this long, so
    # no connection lives for ever on a replica that is being drained.
    websocket_max_lifetime_seconds: float = Field(default=4 * 3600.0, gt=0)
    websocket_idle_timeout_seconds: float = Field(default=120.0, gt=0)
    # Live streams recheck the database this often even without a wake-up: a deep safety
    # net only (a reconnected LISTEN already wakes every stream): one look per process
    # for all its consultants' streams, and one for all its crews' (`SeqWatch`).
    stream_poll_seconds: float = Field(default=30.0, gt=0)
    # permessage-deflate on websockets. Off by default: our messages are small or sent to
    # many dashboards at once, and compressing each copy per connection cost more CPU
    # than the rest of a broadcast and ~100 KiB of memory per socket (bench/RESULTS.md).
    websocket_compression: bool = False


class ServiceSettings(
    RuntimeSettings, DatabaseSettings, AuthSettings, PeerSettings, OutboxSettings, HttpSettings
):
    """What every service needs. Services extend it with their own fields."""

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> ServiceSettings:
        if self.environment != Environment.PRODUCTION:
            return self
        if self.jwt_jwks_url is None and not _strong(self.jwt_secret):
            raise ValueError(
                "production needs REACH_JWT_JWKS_URL, or a REACH_JWT_SECRET of at least "
                f"{MIN_SECRET_LENGTH} characters"
            )
        if not _strong(self.internal_secret):
            raise ValueError(
                f"production needs a REACH_INTERNAL_SECRET of at least {MIN_SECRET_LENGTH} "
                "characters"
            )
        if self.database_url is None:
            raise ValueError("production needs REACH_DATABASE_URL")
        return self

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'reach.db').resolve()}"


def _strong(secret: SecretStr | None) -> bool:
    return secret is not None and len(secret.get_secret_value()) >= MIN_SECRET_LENGTH
