"""Dependencies of triage_api's routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.shared.auth import Principal, require_roles
from services.shared.db.group_commit import GroupCommit
from services.shared.domain.vocabulary import Role
from services.triage_api.context import TriageContext
from services.triage_api.service import NewCase


async def get_context(request: Request) -> TriageContext:
    context: TriageContext = request.app.state.triage
    return context


ContextDep = Annotated[TriageContext, Depends(get_context)]


async def get_intake(request: Request) -> GroupCommit[NewCase]:
    intake: GroupCommit[NewCase] = request.app.state.case_intake
    return intake


# New cases, written in batches under load (see `GroupCommit`).
CaseIntake = Annotated[GroupCommit[NewCase], Depends(get_intake)]
# The crew that asked: the only role that submits and changes cases.
CurrentCrew = Annotated[Principal, Depends(require_roles(Role.PARAMEDIC))]
# Anyone who may read cases: the crew (their own) and operations (all).
CaseReader = Annotated[
    Principal, Depends(require_roles(Role.PARAMEDIC, Role.COORDINATOR, Role.ADMIN))
]
