"""Fixtures for the whole suite.

Every database test runs twice, on SQLite and on PostgreSQL, against a schema built by
running the migrations. SQLite gets a copy of a migrated template file per test;
PostgreSQL gets one migrated database per xdist worker, emptied before each test. (The
join-an-outer-transaction recipe cannot serve here: outbox loops, websockets and races
need real commits seen by several connections.)

With CI=true the PostgreSQL half must run; elsewhere it is skipped, with the reason,
when no server answers.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from services.embedded import EmbeddedSettings
from services.shared.clock import ManualClock
from services.shared.db import migrate
from tests import support

SQLITE = "sqlite"
POSTGRESQL = "postgresql"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return support.build_sqlite_template(tmp_path_factory.mktemp("template"))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    admin = support.postgres_admin_url()
    if not support.run_blocking(support.postgres_reachable(admin)):
        message = f"PostgreSQL is not reachable at {admin}"
        if support.postgres_required():
            pytest.fail(f"{message}, and CI=true requires the PostgreSQL half of the suite")
        pytest.skip(f"{message}: skipping the PostgreSQL half (set REACH_TEST_POSTGRES_URL)")
    # One database per test process (xdist worker or plain run), so concurrent runs on one
    # machine never share or drop each other's.
    name = f"reach_test_{os.getpid()}"
    url: str = support.run_blocking(support.recreate_postgres_database(admin, name))
    support.in_thread(migrate.upgrade, url)
    yield url
    support.run_blocking(support.drop_postgres_database(admin, name))


@pytest.fixture(params=[SQLITE, pytest.param(POSTGRESQL, marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    if request.param == SQLITE:
        return support.copy_sqlite(sqlite_template, tmp_path)
    url: str = request.getfixturevalue("postgres_url")
    support.run_blocking(support.truncate_all(url))
    return url


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> EmbeddedSettings:
    return EmbeddedSettings(
        environment="test",
        database_url=database_url,
        data_dir=tmp_path,
        jwt_secret=support.JWT_SECRET,
        internal_secret=support.INTERNAL_SECRET,
        outbox_poll_seconds=0.05,
        outbox_base_backoff_seconds=0.05,
        outbox_max_backoff_seconds=0.2,
        stream_poll_seconds=0.5,
        websocket_hello_timeout_seconds=1.0,
    )


@pytest.fixture
def fake_peers() -> support.FakePeer:
    return support.FakePeer()


@pytest.fixture
async def http(app_under_test: object) -> AsyncIterator[httpx.AsyncClient]:
    """A client over the app under test (each package's conftest says which app)."""
    transport = httpx.ASGITransport(app=app_under_test)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://reach.test") as client:
        yield client
