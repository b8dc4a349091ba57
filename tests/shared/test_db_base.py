"""`read_only_row`: a row just written, as an object to read, without change tracking."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import inspect

from services.shared.db.base import read_only_row
from services.shared.db.models import TriageCaseEvent
from services.triage_api.views import event_read

VALUES = {
    "case_id": "case-1",
    "seq": 3,
    "type": "offered",
    "at": datetime(2026, 12, 1, 9, 30, tzinfo=UTC),
    "data": {"status": "offered"},
}


def test_it_reads_as_the_stored_row_does() -> None:
    row = read_only_row(TriageCaseEvent, VALUES)
    assert isinstance(row, TriageCaseEvent)
    assert (row.case_id, row.seq, row.type, row.at, row.data) == tuple(VALUES.values())
    assert event_read(row).seq == 3


def test_it_has_no_changes_to_flush_where_a_new_object_has_every_column() -> None:
    built, read_only = TriageCaseEvent(**VALUES), read_only_row(TriageCaseEvent, VALUES)
    assert inspect(built).attrs.seq.history.has_changes()
    state = inspect(read_only)
    assert state.transient
    assert not any(state.attrs[name].history.has_changes() for name in VALUES)
