"""Tokens: HS256 for development, RS256 from a JWKS URL for production (the identity
provider faked at the httpx edge), issuer and audience, service tokens."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from services.shared.auth import (
    JwksCache,
    ServiceTokenSigner,
    TokenVerifier,
    bearer_token,
    mint_token,
)
from services.shared.clock import ManualClock, SystemClock
from services.shared.domain.vocabulary import Role
from services.shared.errors import Unauthorized, UpstreamUnavailable

SECRET = "a-development-secret-of-forty-characters!"
INTERNAL = "an-internal-secret-of-forty-characters!!"


def verifier(**overrides: Any) -> TokenVerifier:
    options: dict[str, Any] = {"secret": SECRET, "internal_secret": INTERNAL}
    options.update(overrides)
    return TokenVerifier(**options)


class TestHs256:
    async def test_a_valid_token_gives_its_principal(self) -> None:
        token = mint_token(SECRET, sub="crew-1", role="paramedic", name="NE23", clock=SystemClock())
        principal = await verifier().verify(token)
        assert (principal.sub, principal.role, principal.name) == ("crew-1", Role.PARAMEDIC, "NE23")

    async def test_expiry_is_judged_by_the_injected_clock(self) -> None:
        clock = ManualClock()
        token = mint_token(SECRET, sub="c", role="paramedic", clock=clock, ttl=timedelta(minutes=1))
        checking = verifier(clock=clock, leeway_seconds=30)
        assert (await checking.verify(token)).sub == "c"
        clock.advance(timedelta(seconds=89))
        assert (await checking.verify(token)).sub == "c"  # within the leeway
        clock.advance(timedelta(seconds=2))
        with pytest.raises(Unauthorized):
            await checking.verify(token)
        with pytest.raises(Unauthorized):
            await verifier().verify(token)  # long expired by the wall clock

    async def test_a_token_from_the_future_is_refused(self) -> None:
        clock = ManualClock()
        early = jwt.encode(
            {"sub": "c", "role": "admin", "exp": 4_000_000_000, "nbf": 3_900_000_000},
            SECRET,
            algorithm="HS256",
        )
        with pytest.raises(Unauthorized):
            await verifier(clock=clock).verify(early)

    @pytest.mark.parametrize(
        "claims",
        [
            {"role": "paramedic"},  # no sub
            {"sub": "x", "role": "surgeon"},  # not a role of reach
            {"sub": "x", "role": "service"},  # a service token is not a person's
            {"sub": "", "role": "admin"},
            # what the database could not store in what the caller writes
            {"sub": "crew\x001", "role": "paramedic"},
            {"sub": "crew-1", "role": "paramedic", "name": "NE\x0023"},
            {"sub": "crew-1", "role": "paramedic", "name": "NE\ud80023"},
        ],
    )
    async def test_unusable_claims_are_refused(self, claims: dict[str, Any]) -> None:
        token = jwt.encode({**claims, "exp": 4_000_000_000}, SECRET, algorithm="HS256")
        with pytest.raises(Unauthorized):
            await verifier().verify(token)

    async def test_another_key_or_algorithm_is_refused(self) -> None:
        forged = mint_token("x" * 40, sub="c", role="admin", clock=SystemClock())
        with pytest.raises(Unauthorized):
            await verifier().verify(forged)
        unsigned = jwt.encode(
            {"sub": "c", "role": "admin", "exp": 4_000_000_000},
            None,  # type: ignore[arg-type]
            algorithm="none",
        )
        with pytest.raises(Unauthorized):
            await verifier().verify(unsigned)

    async def test_issuer_and_audience_are_checked_when_configured(self) -> None:
        checking = verifier(issuer="https://idp.example.nhs.uk", audience="reach")
        right = mint_token(
            SECRET, sub="c", role="admin", clock=SystemClock(),
            issuer="https://idp.example.nhs.uk", audience="reach",
        )  # fmt: skip
        assert (await checking.verify(right)).sub == "c"
        for issuer, audience in [
            ("https://other", "reach"),
            ("https://idp.example.nhs.uk", "x"),
            (None, None),
        ]:
            wrong = mint_token(
                SECRET, sub="c", role="admin", clock=SystemClock(), issuer=issuer, audience=audience
            )
            with pytest.raises(Unauthorized):
                await checking.verify(wrong)


class TestRecentlyVerified:
    async def test_a_token_seen_lately_is_not_checked_again_but_its_expiry_is(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        checks: list[str] = []
        real_decode = jwt.decode

        def counting_decode(token: str, *args: Any, **kwargs: Any) -> Any:
            checks.append(token)
            return real_decode(token, *args, **kwargs)

        monkeypatch.setattr(jwt, "decode", counting_decode)
        clock = ManualClock()
        token = mint_token(SECRET, sub="c", role="paramedic", clock=clock, ttl=timedelta(minutes=5))
        checking = verifier(clock=clock, leeway_seconds=0)
        for _ in range(3):
            assert (await checking.verify(token)).sub == "c"
        assert len(checks) == 1
        clock.advance(timedelta(seconds=61))  # older than a minute: its signature again
        assert (await checking.verify(token)).sub == "c"
        assert len(checks) == 2
        clock.advance(timedelta(minutes=4))  # expired, however recently it was checked
        with pytest.raises(Unauthorized):
            await checking.verify(token)

    async def test_a_refused_token_is_never_remembered(self) -> None:
        forged = mint_token("a-guessed-secret-of-forty-characters-long", sub="c", role="admin",
                            clock=SystemClock())  # fmt: skip
        checking = verifier()
        for _ in range(2):
            with pytest.raises(Unauthorized):
                await checking.verify(forged)

    def test_service_tokens_are_remembered_apart_from_peoples(self) -> None:
        checking = verifier()
        service = ServiceTokenSigner(INTERNAL, service="audit", clock=SystemClock()).token()
        assert checking.verify_service(service).sub == "audit"
        with pytest.raises(Unauthorized):
            checking.verify_service(mint_token(SECRET, sub="c", role="admin", clock=SystemClock()))
        assert checking.verify_service(service).role == Role.SERVICE


class TestBearerHeader:
    @pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer ", "Bearer"])
    def test_a_missing_or_malformed_header_is_401(self, header: str | None) -> None:
        with pytest.raises(Unauthorized):
            bearer_token(header)


def rsa_jwk(kid: str) -> tuple[Any, dict[str, Any]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return key, {**public, "kid": kid, "use": "sig", "alg": "RS256"}


class FakeIdentityProvider:
    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        self.down = False

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.fetches += 1
        if self.down:
            return httpx.Response(503)
        return httpx.Response(200, json={"keys": self.keys})


def rs256(key: Any, kid: str, **claims: Any) -> str:
    body = {"sub": "dr-a", "role": "consultant", "exp": 4_000_000_000, **claims}
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": kid})


class TestJwks:
    @pytest.fixture
    def idp(self) -> FakeIdentityProvider:
        return FakeIdentityProvider()

    @pytest.fixture
    async def jwks_verifier(self, idp: FakeIdentityProvider) -> Any:
        async with httpx.AsyncClient(transport=httpx.MockTransport(idp.handle)) as client:
            cache = JwksCache("https://idp.example/jwks", client, ttl_seconds=300)
            yield TokenVerifier(secret=None, internal_secret=INTERNAL, jwks=cache, audience="reach")

    async def test_an_rs256_token_verifies_against_the_published_key(
        self, idp: FakeIdentityProvider, jwks_verifier: TokenVerifier
    ) -> None:
        key, public = rsa_jwk("2026-11")
        idp.keys = [public]
        principal = await jwks_verifier.verify(rs256(key, "2026-11", aud="reach"))
        assert principal.role == Role.CONSULTANT
        await jwks_verifier.verify(rs256(key, "2026-11", aud="reach"))
        assert idp.fetches == 1  # cached

    async def test_an_hs256_token_is_refused_when_keys_come_from_jwks(
        self, idp: FakeIdentityProvider, jwks_verifier: TokenVerifier
    ) -> None:
        _, public = rsa_jwk("k1")
        idp.keys = [public]
        hs = jwt.encode(
            {"sub": "x", "role": "admin", "exp": 4_000_000_000, "aud": "reach"},
            "a-guessed-shared-secret-of-forty-characters",
            algorithm="HS256",
            headers={"kid": "k1"},
        )
        with pytest.raises(Unauthorized):
            await jwks_verifier.verify(hs)

    async def test_a_rotated_key_is_fetched_once_and_forged_kids_are_refused(
        self, idp: FakeIdentityProvider, jwks_verifier: TokenVerifier
    ) -> None:
        old_key, old_public = rsa_jwk("old")
        idp.keys = [old_public]
        await jwks_verifier.verify(rs256(old_key, "old", aud="reach"))
        new_key, new_public = rsa_jwk("new")
        idp.keys = [old_public, new_public]
        # Within ten seconds of the last fetch nothing is refetched: forged kids cannot
        # make us hammer the identity provider.
        with pytest.raises(Unauthorized):
            await jwks_verifier.verify(rs256(new_key, "new", aud="reach"))
        assert idp.fetches == 1

    async def test_no_reachable_keys_is_a_503_not_a_401(
        self, idp: FakeIdentityProvider, jwks_verifier: TokenVerifier
    ) -> None:
        key, _ = rsa_jwk("k")
        idp.down = True
        with pytest.raises(UpstreamUnavailable):
            await jwks_verifier.verify(rs256(key, "k", aud="reach"))


class TestServiceTokens:
    def test_a_service_token_verifies_only_as_a_service(self) -> None:
        signer = ServiceTokenSigner(INTERNAL, service="consult_router", clock=SystemClock())
        principal = verifier().verify_service(signer.token())
        assert (principal.sub, principal.role) == ("consult_router", Role.SERVICE)

    async def test_people_and_services_cannot_swap_tokens(self) -> None:
        person = mint_token(SECRET, sub="c", role="admin", clock=SystemClock())
        with pytest.raises(Unauthorized):
            verifier().verify_service(person)
        service = ServiceTokenSigner(INTERNAL, service="audit", clock=SystemClock()).token()
        with pytest.raises(Unauthorized):
            await verifier().verify(service)

    def test_the_signer_reuses_its_token_then_renews_it(self) -> None:
        clock = ManualClock()
        signer = ServiceTokenSigner(INTERNAL, service="audit", clock=clock)
        first = signer.token()
        clock.advance(timedelta(minutes=1))
        assert signer.token() == first
        clock.advance(timedelta(minutes=5))
        assert signer.token() != first
