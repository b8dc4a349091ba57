"""Text the database cannot store, carried in by a token: the development sign-in refuses
to put it in one, and a token that holds it anyway (from an identity provider) is
refused before anything is written with it."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import func, select

from services.embedded import EmbeddedApp, EmbeddedSettings
from services.shared.db.models import TriageCase
from services.shared.db.session import unit_of_work
from tests.factories import (
    NUL_TEXT,
    UNSTORABLE_WAYS,
    UNSTORABLE_WORDS,
    case_body,
    idempotency_key,
    json_content,
)
from tests.support import token


@pytest.fixture
def settings(settings: EmbeddedSettings) -> EmbeddedSettings:
    # Development sign-in is offered only in development (and to this machine).
    return settings.model_copy(update={"environment": "dev"})


async def cases_stored(embedded: EmbeddedApp) -> int:
    async with unit_of_work(embedded.parent.state.resources.sessionmaker) as session:
        count: int = (await session.execute(select(func.count(TriageCase.id)))).scalar_one()
    return count


class TestDevelopmentSignIn:
    @pytest.mark.parametrize("way", UNSTORABLE_WAYS)
    async def test_a_name_that_cannot_be_stored_gets_no_token(
        self, http: httpx.AsyncClient, way: str
    ) -> None:
        text, raw_surrogates = UNSTORABLE_WAYS[way]
        response = await http.post(
            "/dev/token",
            content=json_content(
                {"role": "paramedic", "sub": "crew-ne23", "name": text},
                raw_surrogates=raw_surrogates,
            ),
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 422, response.text
        body = response.json()
        assert (body["error"], [f["path"] for f in body["fields"]]) == (
            "validation_error",
            ["name"],
        )
        assert "token" not in body
        assert not any(word in response.text for word in UNSTORABLE_WORDS)

    async def test_an_ordinary_name_gets_a_token(self, http: httpx.AsyncClient) -> None:
        response = await http.post(
            "/dev/token", json={"role": "paramedic", "sub": "crew-ne23", "name": "NE23"}
        )
        assert response.status_code == 200, response.text
        assert response.json()["name"] == "NE23"


class TestTokens:
    @pytest.mark.parametrize(("sub", "name"), [("crew-ne23", NUL_TEXT), (NUL_TEXT, None)])
    async def test_a_token_holding_a_nul_writes_nothing(
        self, http: httpx.AsyncClient, embedded: EmbeddedApp, sub: str, name: str | None
    ) -> None:
        response = await http.post(
            "/v1/cases",
            json=case_body(),
            headers={
                "Authorization": f"Bearer {token('paramedic', sub, name=name)}",
                "Idempotency-Key": idempotency_key(),
            },
        )
        assert response.status_code == 401, response.text
        assert response.json()["error"] == "invalid_token"
        assert not any(word in response.text for word in UNSTORABLE_WORDS)
        assert await cases_stored(embedded) == 0
