"""The baseline `POST /v1/cases` is measured against: FastAPI on uvicorn, the same
pydantic body, one ORM row inserted per request, on the same database engine settings
(SQLite in WAL with synchronous=FULL and one connection, or PostgreSQL) — and nothing
else: no auth, no NEWS2, no idempotency, no outbox, no metrics.

    uvicorn --factory bench.baseline_app:create_app   (REACH_DATABASE_URL says where)
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from sqlalchemy import JSON, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.shared.db.engine import create_engine
from services.shared.db.session import create_sessionmaker
from services.triage_api.schemas import CaseCreate


class _Base(DeclarativeBase):
    pass


class BaselineCase(_Base):
    __tablename__ = "bench_baseline_case"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[str] = mapped_column(String(40))
    body: Mapped[dict[str, Any]] = mapped_column(JSON)


def create_app() -> FastAPI:
    url = os.environ["REACH_DATABASE_URL"]
    # The setting reach's own engine reads, so both pool alike; the benchmark sizes it
    # for its concurrency. With fewer connections than requests in flight, each request
    # holding one for its transaction, the pool's overflow opened a new connection to
    # PostgreSQL for about one request in thirty, which cost the baseline 7-10% of its
    # throughput.
    engine = create_engine(url, pool_size=int(os.environ.get("REACH_DATABASE_POOL_SIZE", "10")))
    maker = create_sessionmaker(engine)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with engine.begin() as connection:
            await connection.run_sync(_Base.metadata.create_all)
        yield
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/cases", status_code=201)
    async def submit(payload: CaseCreate) -> dict[str, str]:
        row = BaselineCase(
            id=str(uuid.uuid4()),
            created_at=datetime.now(UTC).isoformat(),
            body=payload.model_dump(mode="json"),
        )
        async with maker() as session, session.begin():
            session.add(row)
        return {"id": row.id}

    return app
