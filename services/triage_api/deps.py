"""Dependencies of triage_api's routes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from services.shared.auth import Principal, require_roles
from services.shared.db.group_commit import GroupCommit
from services.shared.db.session import SessionMaker
from services.shared.domain.vocabulary import Role
from services.triage_api.context import TriageContext
from services.triage_api.service import NewCase


async def get_context(request: Request) -> TriageContext:
    context: TriageContext = request.app.state.triage
    return context


ContextDep = Annotated[TriageContext, Depends(get_context)]


@dataclass(frozen=True, slots=True)
class Intake:
    """All that a submission takes from the app, as one dependency: FastAPI spends about
    20 us solving each dependency of a route, on every request, and this is the route
    crews call most."""

    ctx: TriageContext
    # New cases, written in batches under load (see `GroupCommit`).
    batches: GroupCommit[NewCase]
    # For the case a batch did not take, written alone.
    sessionmaker: SessionMaker


async def get_intake(request: Request) -> Intake:
    intake: Intake = request.app.state.case_intake
    return intake


CaseIntake = Annotated[Intake, Depends(get_intake)]
# The crew that asked: the only role that submits and changes cases.
CurrentCrew = Annotated[Principal, Depends(require_roles(Role.PARAMEDIC))]
# Anyone who may read cases: the crew (their own) and operations (all).
CaseReader = Annotated[
    Principal, Depends(require_roles(Role.PARAMEDIC, Role.COORDINATOR, Role.ADMIN))
]
