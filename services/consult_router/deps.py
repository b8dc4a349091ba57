"""Dependencies of consult_router's routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.consult_router.context import RouterContext
from services.shared.auth import Principal, require_roles
from services.shared.domain.vocabulary import Role


async def get_context(request: Request) -> RouterContext:
    context: RouterContext = request.app.state.router
    return context


ContextDep = Annotated[RouterContext, Depends(get_context)]
CurrentConsultant = Annotated[Principal, Depends(require_roles(Role.CONSULTANT))]
RotaAdmin = Annotated[Principal, Depends(require_roles(Role.ADMIN))]
RotaReader = Annotated[Principal, Depends(require_roles(Role.ADMIN, Role.COORDINATOR))]
QueueReader = Annotated[
    Principal, Depends(require_roles(Role.CONSULTANT, Role.COORDINATOR, Role.ADMIN))
]
ConsultReader = Annotated[
    Principal, Depends(require_roles(Role.CONSULTANT, Role.COORDINATOR, Role.ADMIN))
]
