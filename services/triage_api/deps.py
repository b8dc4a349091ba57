"""Dependencies of triage_api's routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.shared.auth import Principal, require_roles
from services.shared.domain.vocabulary import Role
from services.triage_api.context import TriageContext


def get_context(request: Request) -> TriageContext:
    context: TriageContext = request.app.state.triage
    return context


ContextDep = Annotated[TriageContext, Depends(get_context)]
# The crew that asked: the only role that submits and changes cases.
CurrentCrew = Annotated[Principal, Depends(require_roles(Role.PARAMEDIC))]
# Anyone who may read cases: the crew (their own) and operations (all).
CaseReader = Annotated[
    Principal, Depends(require_roles(Role.PARAMEDIC, Role.COORDINATOR, Role.ADMIN))
]
