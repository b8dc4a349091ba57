"""Alembic environment: async, one metadata for every service's tables.

The database URL comes from the caller (`services.shared.db.migrate`) or, for the plain
`alembic` command, from REACH_DATABASE_URL / the data folder, as the services read it.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from services.shared.db import models
from services.shared.db.engine import create_engine
from services.shared.settings import ServiceSettings

config = context.config
# An arbitrary constant naming reach's migration lock among PostgreSQL advisory locks.
_MIGRATION_LOCK = 0x72656163
target_metadata = models.Base.metadata


def _database_url() -> str:
    url = config.attributes.get("database_url")
    if isinstance(url, str) and url:
        return url
    return ServiceSettings().resolved_database_url()


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite alters tables by copying them; batch mode does that for us.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Two migrators at once (a re-run Job, `serve --migrate` on several replicas)
            # queue here; the second finds the schema already at head. SQLite's
            # `BEGIN IMMEDIATE` serialises them there.
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
        context.run_migrations()


async def _run_async(url: str) -> None:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_configure)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    context.configure(
        url=_database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if isinstance(connection, Connection):
        _configure(connection)
        return
    asyncio.run(_run_async(_database_url()))


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
