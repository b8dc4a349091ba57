"""Bearer-token authentication and roles.

People present JWTs with `sub`, `role`, `name` and `exp` (plus `iss`/`aud` when
configured): HS256 with a shared secret in development and tests, RS256 (or ES256) keys
from a JWKS URL in production. Services calling each other's internal endpoints present
short-lived HS256 tokens signed with the internal secret, with role `service` and their
own audience, so a person's token can never reach an internal endpoint.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

import httpx
import jwt
from fastapi import Depends, Request

from services.shared.clock import Clock, SystemClock
from services.shared.domain.vocabulary import Role
from services.shared.errors import Forbidden, Unauthorized, UpstreamUnavailable
from services.shared.storable_text import is_storable

INTERNAL_AUDIENCE = "reach-internal"
_PEOPLE_ROLES = frozenset({Role.PARAMEDIC, Role.CONSULTANT, Role.COORDINATOR, Role.ADMIN})
_JWKS_ALGORITHMS = ["RS256", "ES256"]
# Expiry is checked against our injected clock in `_check_times`, so tests can move time.
_CLOCK_CHECKS_OFF = {"verify_exp": False, "verify_nbf": False, "verify_iat": False}
MAX_TOKEN_BYTES = 8192


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a token's subject and role."""

    sub: str
    role: Role
    name: str

    def has_role(self, *roles: Role) -> bool:
        return self.role in roles


class InvalidToken(Unauthorized):
    default_code = "invalid_token"


class JwksCache:
    """Signing keys fetched from a JWKS URL over the app's async client.

    Keys are cached for `ttl_seconds`; an unknown `kid` triggers one refresh (a rotated
    key), rate-limited so a flood of forged kids cannot hammer the identity provider.
    """

    def __init__(self, url: str, client: httpx.AsyncClient, *, ttl_seconds: float) -> None:
        self._url = url
        self._client = client
        self._ttl = ttl_seconds
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def key_for(self, kid: str) -> jwt.PyJWK:
        if time.monotonic() - self._fetched_at > self._ttl or kid not in self._keys:
            await self._refresh(force=kid not in self._keys)
        key = self._keys.get(kid)
        if key is None:
            raise InvalidToken("the token is signed with an unknown key")
        return key

    async def _refresh(self, *, force: bool) -> None:
        async with self._lock:
            age = time.monotonic() - self._fetched_at
            if age < 10 or (not force and age < self._ttl):
                return
            try:
                response = await self._client.get(self._url, timeout=5)
                response.raise_for_status()
                document = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                if self._keys:  # keep verifying with the keys we have
                    return
                raise UpstreamUnavailable("the identity provider's keys are unavailable") from exc
            keys: dict[str, jwt.PyJWK] = {}
            for entry in document.get("keys", []):
                try:
                    key = jwt.PyJWK(entry)
                except jwt.PyJWTError:
                    continue
                if key.key_id:
                    keys[key.key_id] = key
            self._keys = keys
            self._fetched_at = time.monotonic()


class _RecentlyVerified:
    """Claims of tokens whose signature was checked in the last `max_age` seconds.

    A crew's app or a dashboard sends the same token with every request for hours, and
    checking its signature is most of the cost of authenticating it (an RS256 check far
    more than HS256). A token is kept only after its signature passed, keyed by the whole
    token, so a kept answer is the answer the check would give again. Each token is checked
    again once its entry is `max_age` old, so a withdrawn signing key is not honoured much
    longer than the key cache beneath honours it; expiry and not-before are judged on
    every use.
    """

    def __init__(self, clock: Clock, *, max_entries: int = 4096, max_age_seconds: float = 60.0):
        self._clock = clock
        self._max_entries = max_entries
        self._max_age = max_age_seconds
        self._entries: dict[str, tuple[float, Mapping[str, Any]]] = {}

    def get(self, token: str) -> Mapping[str, Any] | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        verified_at, claims = entry
        if self._clock.now().timestamp() - verified_at > self._max_age:
            del self._entries[token]
            return None
        return claims

    def put(self, token: str, claims: Mapping[str, Any]) -> None:
        if len(self._entries) >= self._max_entries:
            # The oldest insertion goes first (dicts keep insertion order).
            del self._entries[next(iter(self._entries))]
        self._entries[token] = (self._clock.now().timestamp(), claims)


class TokenVerifier:
    """Turns a bearer token into a `Principal`, or raises `Unauthorized`."""

    def __init__(
        self,
        *,
        secret: str | None,
        internal_secret: str,
        jwks: JwksCache | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        leeway_seconds: int = 30,
        clock: Clock | None = None,
    ) -> None:
        if secret is None and jwks is None:
            raise ValueError("a token verifier needs a secret or a JWKS URL")
        self._clock = clock or SystemClock()
        self._secret = secret
        self._internal_secret = internal_secret
        self._jwks = jwks
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds
        # Separate caches: a person's token must never pass as a service's, nor the reverse.
        self._people = _RecentlyVerified(self._clock)
        self._services = _RecentlyVerified(self._clock)

    async def verify(self, token: str) -> Principal:
        claims = self._people.get(token)
        if claims is None:
            claims = await self._decode(token)
            self._people.put(token, claims)
        self._check_times(claims)
        return _principal_from(claims, allowed=_PEOPLE_ROLES)

    def verify_service(self, token: str) -> Principal:
        claims = self._services.get(token)
        if claims is None:
            claims = self._decode_service(token)
            self._services.put(token, claims)
        self._check_times(claims)
        return _principal_from(claims, allowed=frozenset({Role.SERVICE}))

    def _decode_service(self, token: str) -> Mapping[str, Any]:
        if len(token) > MAX_TOKEN_BYTES:
            raise InvalidToken("the token is too long")
        try:
            return jwt.decode(
                token,
                self._internal_secret,
                algorithms=["HS256"],
                audience=INTERNAL_AUDIENCE,
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": ["exp", "sub", "aud"],
                },
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken("the service token is invalid or expired") from exc

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        """Expiry and not-before against the injected clock, not the library's own."""
        now = self._clock.now().timestamp()
        expires, not_before = claims.get("exp"), claims.get("nbf")
        if not isinstance(expires, int | float) or now > expires + self._leeway:
            raise InvalidToken("the token is invalid or expired")
        if isinstance(not_before, int | float) and now < not_before - self._leeway:
            raise InvalidToken("the token is not valid yet")

    async def _decode(self, token: str) -> dict[str, Any]:
        if len(token) > MAX_TOKEN_BYTES:
            raise InvalidToken("the token is too long")
        options: dict[str, Any] = {**_CLOCK_CHECKS_OFF, "require": ["exp", "sub"]}
        kwargs: dict[str, Any] = {"options": options}
        if self._issuer:
            kwargs["issuer"] = self._issuer
            options["require"].append("iss")
        if self._audience:
            kwargs["audience"] = self._audience
            options["require"].append("aud")
        else:
            options["verify_aud"] = False
        try:
            if self._jwks is not None:
                header = jwt.get_unverified_header(token)
                kid = header.get("kid")
                if not isinstance(kid, str):
                    raise InvalidToken("the token names no signing key")
                key = await self._jwks.key_for(kid)
                return jwt.decode(token, key, algorithms=_JWKS_ALGORITHMS, **kwargs)
            assert self._secret is not None  # noqa: S101 -- guaranteed by __init__
            return jwt.decode(token, self._secret, algorithms=["HS256"], **kwargs)
        except jwt.PyJWTError as exc:
            raise InvalidToken("the token is invalid or expired") from exc


def _principal_from(claims: Mapping[str, Any], *, allowed: frozenset[Role]) -> Principal:
    sub, role, name = claims.get("sub"), claims.get("role"), claims.get("name")
    if not isinstance(sub, str) or not sub or len(sub) > 128:
        raise InvalidToken("the token has no usable subject")
    try:
        parsed_role = Role(str(role))
    except ValueError:
        raise InvalidToken("the token's role is not one of reach's roles") from None
    if parsed_role not in allowed:
        raise InvalidToken("the token's role is not accepted here")
    display = name if isinstance(name, str) and name else sub
    # Both are written with what the caller does (a case's crew, a consult's consultant):
    # text the database cannot store would fail that write.
    if not (is_storable(sub) and is_storable(display)):
        raise InvalidToken("the token's subject or name holds a NUL or a lone surrogate")
    return Principal(sub=sub, role=parsed_role, name=display[:200])


def mint_token(
    secret: str,
    *,
    sub: str,
    role: Role | str,
    name: str | None = None,
    clock: Clock,
    ttl: timedelta = timedelta(hours=12),
    issuer: str | None = None,
    audience: str | None = None,
) -> str:
    """A signed HS256 token, for development, tests and the `reach token` command."""
    now = clock.now()
    claims: dict[str, Any] = {
        "sub": sub,
        "role": str(role),
        "name": name or sub,
        "iat": int(now.timestamp()),
        "exp": int((now + ttl).timestamp()),
    }
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")


class ServiceTokenSigner:
    """Mints (and reuses for a while) the token a service presents to its peers."""

    def __init__(self, internal_secret: str, *, service: str, clock: Clock) -> None:
        self._secret = internal_secret
        self._service = service
        self._clock = clock
        self._token: str | None = None
        self._renew_after = 0.0

    def token(self) -> str:
        now = self._clock.now()
        if self._token is None or now.timestamp() >= self._renew_after:
            self._token = mint_token(
                self._secret,
                sub=self._service,
                role=Role.SERVICE,
                clock=self._clock,
                ttl=timedelta(minutes=10),
                audience=INTERNAL_AUDIENCE,
            )
            self._renew_after = now.timestamp() + 300
        return self._token


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise Unauthorized("sign in: an Authorization bearer token is required")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    return token.strip()


def _verifier(request: Request) -> TokenVerifier:
    verifier: TokenVerifier = request.app.state.resources.tokens
    return verifier


async def current_principal(request: Request) -> Principal:
    token = bearer_token(request.headers.get("authorization"))
    return await _verifier(request).verify(token)


def require_roles(*roles: Role) -> Callable[..., Any]:
    """A dependency that admits only the given roles (401 without a token, 403 otherwise).

    It reads the token itself rather than depending on `current_principal`: FastAPI
    spends about 20 us solving each dependency, on every request, and no route here
    asks for the principal twice."""

    async def dependency(request: Request) -> Principal:
        principal = await current_principal(request)
        if principal.role not in roles:
            raise Forbidden("your role may not do this")
        return principal

    return dependency


async def current_service(request: Request) -> Principal:
    token = bearer_token(request.headers.get("authorization"))
    return _verifier(request).verify_service(token)


CurrentService = Annotated[Principal, Depends(current_service)]
