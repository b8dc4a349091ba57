from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.shared.resources import load_or_create_secret, resolve_secrets
from services.shared.settings import ServiceSettings

STRONG = "s" * 40


class TestEnvironment:
    def test_flat_reach_names_are_read(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("REACH_DATABASE_URL", "postgresql+asyncpg://db/reach")
        monkeypatch.setenv("REACH_JWT_ISSUER", "https://idp")
        settings = ServiceSettings()
        assert settings.database_url == "postgresql+asyncpg://db/reach"
        assert settings.jwt_issuer == "https://idp"

    def test_the_default_database_is_sqlite_in_the_data_folder(self, tmp_path: Path) -> None:
        settings = ServiceSettings(data_dir=tmp_path)
        assert settings.resolved_database_url() == f"sqlite+aiosqlite:///{tmp_path / 'reach.db'}"


class TestProduction:
    def test_placeholder_or_missing_secrets_are_refused(self) -> None:
        with pytest.raises(ValidationError, match="REACH_JWT"):
            ServiceSettings(
                environment="production",
                jwt_secret="changeme",
                internal_secret=STRONG,
                database_url="postgresql+asyncpg://db/r",
            )
        with pytest.raises(ValidationError, match="REACH_INTERNAL_SECRET"):
            ServiceSettings(
                environment="production",
                jwt_secret=STRONG,
                database_url="postgresql+asyncpg://db/r",
            )
        with pytest.raises(ValidationError, match="REACH_DATABASE_URL"):
            ServiceSettings(environment="production", jwt_secret=STRONG, internal_secret=STRONG)

    def test_a_jwks_url_replaces_the_shared_secret(self) -> None:
        settings = ServiceSettings(
            environment="production",
            jwt_jwks_url="https://idp.example/jwks",
            internal_secret=STRONG,
            database_url="postgresql+asyncpg://db/r",
        )
        assert resolve_secrets(settings) == (None, STRONG)


class TestDevelopmentSecrets:
    def test_generated_once_and_kept_private(self, tmp_path: Path) -> None:
        first = load_or_create_secret(tmp_path / "jwt-secret")
        assert load_or_create_secret(tmp_path / "jwt-secret") == first
        assert len(first) >= 40
        assert (tmp_path / "jwt-secret").stat().st_mode & 0o077 == 0

    def test_dev_settings_without_secrets_get_generated_ones(self, tmp_path: Path) -> None:
        jwt_secret, internal = resolve_secrets(ServiceSettings(data_dir=tmp_path))
        assert jwt_secret
        assert internal
        assert jwt_secret != internal
