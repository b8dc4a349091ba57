"""The `reach` command, including `reach serve` as a newcomer runs it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from services.cli import main
from tests.factories import case_body, idempotency_key


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class TestToken:
    def test_mints_a_token_signed_with_the_data_folders_key(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code = main(
            [
                "token",
                "--role",
                "consultant",
                "--sub",
                "dr-a",
                "--name",
                "Dr A",
                "--data-dir",
                str(tmp_path),
            ]
        )
        assert code == 0
        token = capsys.readouterr().out.strip()
        secret = (tmp_path / "jwt-secret").read_text().strip()
        claims = jwt.decode(token, secret, algorithms=["HS256"])
        assert (claims["sub"], claims["role"], claims["name"]) == ("dr-a", "consultant", "Dr A")
        assert oct((tmp_path / "jwt-secret").stat().st_mode & 0o777) == "0o600"

    def test_refuses_an_unknown_role(self, tmp_path: Path) -> None:
        with pytest.raises(SystemExit):
            main(["token", "--role", "service", "--sub", "x", "--data-dir", str(tmp_path)])


class TestMigrate:
    def test_creates_the_schema_in_the_data_folder(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["migrate", "--data-dir", str(tmp_path)]) == 0
        assert (tmp_path / "reach.db").exists()
        assert "head" in capsys.readouterr().out

    def test_an_unreachable_database_is_a_clear_error(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        url = "postgresql+asyncpg://nobody@127.0.0.1:9/none"
        assert main(["migrate", "--database-url", url, "--data-dir", str(tmp_path)]) == 1
        assert "cannot use the database" in capsys.readouterr().err


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "not-yet-made" / "reach-data"


@pytest.fixture
def served(data_dir: Path) -> Iterator[str]:
    """`reach serve` in its own process, as `make run` starts it on a fresh checkout."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("REACH_")}
    process = subprocess.Popen(  # noqa: S603 -- our own command, fixed arguments
        [
            sys.executable,
            "-m",
            "services.cli",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
        ],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise AssertionError("reach serve did not become ready")
        yield base
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=15)
        assert "Traceback" not in output, output


class TestServe:
    def test_the_embedded_default_starts_migrated_and_takes_a_case(
        self, served: str, data_dir: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        main(["token", "--role", "paramedic", "--sub", "crew-ne23", "--data-dir", str(data_dir)])
        token = capsys.readouterr().out.strip()
        response = httpx.post(
            f"{served}/v1/cases",
            json=case_body(),
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": idempotency_key()},
        )
        assert response.status_code == 201
        assert (data_dir / "reach.db").exists()
