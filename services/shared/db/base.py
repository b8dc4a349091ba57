"""The declarative base shared by every model, with a naming convention so that
constraint names are stable across SQLite and PostgreSQL and migrations can drop them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from sqlalchemy import JSON, DateTime, MetaData, Table, TypeDecorator, inspect
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, configure_mappers, make_transient_to_detached
from sqlalchemy.orm.instrumentation import manager_of_class

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp stored in UTC and read back aware, on every database.

    SQLite keeps no offset, so values are normalised to UTC on the way in and marked UTC
    on the way out; PostgreSQL uses `timestamptz`.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(
        self,
        value: datetime | None,
        dialect: Dialect,  # noqa: ARG002 -- the same on every dialect
    ) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; pass a timezone-aware time")
        return value.astimezone(UTC)

    def process_result_value(
        self,
        value: datetime | None,
        dialect: Dialect,  # noqa: ARG002
    ) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


M = TypeVar("M", bound="Base")

# JSON documents: JSONB on PostgreSQL, JSON text elsewhere.
JsonDocument = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UtcDateTime}


def read_only_row(model: type[M], values: dict[str, Any]) -> M:
    """A row just written, as an object to read from, built the way SQLAlchemy builds a
    row it loads: the values go straight into the instance's dict.

    The constructor instead records each attribute as a change to flush (40 us for a
    case's 36 columns on the benchmark VM; this takes 2 us), which a row already written
    does not need. Never add the result to a session: it has no changes to flush, and
    the row it describes is already stored.
    """
    manager = manager_of_class(model)
    # The constructor would configure the mappers first. Asked each time, that walks
    # every registry (1.1% of the embedded default's CPU under load): once is enough.
    if not manager.mapper.configured:
        configure_mappers()
    instance: M = manager.new_instance()
    instance.__dict__.update(values)
    return instance


def adopt_written_row(session: AsyncSession, model: type[M], values: dict[str, Any]) -> M:
    """A row just written as Core, made the session's own object as if it had been read:
    later reads in the session find it, and its later changes flush as UPDATEs.

    The ORM's own INSERT (`session.add`, then a flush) costs a flush of the whole
    session, several times the statement (`table_of`). `values` must hold every column.

    Unlike a row the ORM inserted, it is not let go if the savepoint it was written in
    is undone: the session keeps an object whose row is gone (not expired, if it was not
    changed). Writing the row again adopts afresh; nothing else should look it up there.
    """
    instance = read_only_row(model, values)
    make_transient_to_detached(instance)
    # The row did not exist until now (its INSERT would have failed), so an object the
    # session holds under its key is a leftover of an undone savepoint: let it go.
    key = inspect(instance).key
    stale = session.identity_map.get(key) if key is not None else None
    if stale is not None:
        session.expunge(stale)
    session.add(instance)
    return instance


def table_of(model: type[Any]) -> Table:
    """The model's table, to build statements on that run as plain SQL (Core).

    A statement built on a model's attributes goes through the ORM's layer when it runs
    (its compile state, and for an UPDATE the search of the session for objects to bring
    up to date), which costs more than the statement itself: on the benchmark VM an
    UPDATE of one row took 220 us through the ORM and 60-80 us as Core on SQLite, 350-420
    and 205-250 us of the client's CPU on PostgreSQL. For rows the session holds no
    object of, or whose object the caller brings up to date itself.
    """
    table = model.__table__
    if not isinstance(table, Table):
        raise TypeError(f"{model.__name__} is not mapped to a table")
    return table
