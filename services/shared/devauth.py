"""Development sign-in for the embedded default: a page asks for a token for a demo
user and gets one signed with the development key.

It exists only where it is harmless: `REACH_ENVIRONMENT=dev`, people's tokens signed
with a local HS256 key (not an identity provider), and the request coming from this
machine. Anywhere else the route answers 404, as if it did not exist.
"""

from __future__ import annotations

from datetime import timedelta
from ipaddress import ip_address

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from services.shared.auth import mint_token
from services.shared.domain.vocabulary import Role
from services.shared.errors import NotFound
from services.shared.resources import Resources
from services.shared.settings import Environment, ServiceSettings
from services.shared.text_guard import StorableTextRoute

DEV_TOKEN_PATH = "/dev/token"  # noqa: S105 -- a path, not a secret
_PEOPLE = (Role.PARAMEDIC, Role.CONSULTANT, Role.COORDINATOR, Role.ADMIN)


class DevTokenRequest(BaseModel):
    role: Role
    sub: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    name: str | None = Field(default=None, max_length=100)


class DevToken(BaseModel):
    token: str
    role: Role
    sub: str
    name: str


def _from_this_machine(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def dev_auth_router(settings: ServiceSettings) -> APIRouter:
    # The name goes into the token, and from there into what its holder writes: text the
    # database cannot store is refused here, as on every other route.
    router = APIRouter(tags=["development"], include_in_schema=False, route_class=StorableTextRoute)

    def secret_if_allowed(request: Request) -> str:
        resources: Resources = request.app.state.resources
        allowed = (
            settings.environment == Environment.DEV
            and settings.jwt_jwks_url is None
            and _from_this_machine(request)
        )
        if not allowed or resources.jwt_secret is None:
            raise NotFound("not found")
        return resources.jwt_secret

    @router.get(DEV_TOKEN_PATH)
    async def dev_sign_in_available(request: Request) -> dict[str, bool]:
        """Whether development sign-in is offered here (404 when it is not)."""
        secret_if_allowed(request)
        return {"available": True}

    @router.post(DEV_TOKEN_PATH)
    async def dev_token(payload: DevTokenRequest, request: Request) -> DevToken:
        """A development token for a demo user (embedded default, this machine only)."""
        secret = secret_if_allowed(request)
        if payload.role not in _PEOPLE:
            raise NotFound("not found")
        resources: Resources = request.app.state.resources
        name = payload.name or payload.sub
        token = mint_token(
            secret,
            sub=payload.sub,
            role=payload.role,
            name=name,
            clock=resources.clock,
            ttl=timedelta(hours=12),
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
        return DevToken(token=token, role=payload.role, sub=payload.sub, name=name)

    return router
