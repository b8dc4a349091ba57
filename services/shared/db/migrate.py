"""Running the one Alembic history programmatically (the CLI, tests, the deploy job).

Alembic's own commands are synchronous and start their own event loop, so call these
from synchronous code, or from async code through a worker thread.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

_PACKAGED = Path(__file__).resolve().parents[2] / "_migrations"
_SOURCE_TREE = Path(__file__).resolve().parents[3] / "migrations"


def migrations_dir() -> Path:
    """The migrations folder: beside the package in a source tree, inside it when built."""
    for candidate in (_SOURCE_TREE, _PACKAGED):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("the migrations folder is missing from this installation")


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    # Passed as an attribute, not an ini option: URLs may hold '%' and passwords.
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


def heads() -> list[str]:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return list(script.get_heads())


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )
