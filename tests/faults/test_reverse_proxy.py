"""The split services behind nginx with deploy/nginx/reach.conf: one public path space,
each prefix answered by its own process, websockets through the proxy, and the internal
and metrics paths closed from outside."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from tests import support
from tests.factories import case_body, idempotency_key
from tests.faults.cluster import Cluster, free_port, running_cluster
from tests.faults.conftest import Hands

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "reach.conf"
SERVICES = ("triage-api", "consult-router", "audit")

pytestmark = pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")


def start_nginx(config: Path, prefix: Path) -> subprocess.Popen[bytes]:
    nginx = shutil.which("nginx")
    assert nginx is not None
    return subprocess.Popen([nginx, "-c", str(config), "-p", str(prefix)])  # noqa: S603


@pytest.fixture
async def proxied(cluster_database: str, tmp_path: Path) -> AsyncIterator[tuple[Cluster, str]]:
    counts = dict.fromkeys(SERVICES, 1)
    async with running_cluster(cluster_database, tmp_path, counts, {}) as cluster:
        conf = CONFIG.read_text()
        for service in SERVICES:
            port = cluster.replicas[service][0].port
            conf = conf.replace(f"server {service}:8000;", f"server 127.0.0.1:{port};")
        port = free_port()
        conf = re.sub(r"listen 8080;", f"listen 127.0.0.1:{port};", conf)
        conf = conf.replace("access_log /dev/stdout;", "access_log off;")
        main = tmp_path / "nginx.conf"
        main.write_text(
            f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/nginx-error.log;\n"
            f"daemon off;\nevents {{}}\nhttp {{\n{conf}\n}}\n"
        )
        process = start_nginx(main, tmp_path)
        base = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient() as http:

                async def up() -> bool:
                    try:
                        return (await http.get(base + "/nginx-healthz")).status_code == 200
                    except httpx.HTTPError:
                        return False

                await support.eventually(up, timeout=10, message="nginx did not start")
            yield cluster, base
        finally:
            process.terminate()
            process.wait(timeout=10)


async def test_one_public_path_space_through_the_proxy(proxied: tuple[Cluster, str]) -> None:
    cluster, base = proxied
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        hands = Hands(http, {"consult-router": base, "triage-api": base})
        await hands.consultant("dr-a")
        socket = await connect(base.replace("http://", "ws://") + "/v1/consultant/stream")
        async with socket:
            await socket.send(
                json.dumps({"type": "hello", "token": support.token("consultant", "dr-a")})
            )
            assert json.loads(await socket.recv())["type"] == "welcome"
            await socket.send(json.dumps({"type": "status", "status": "available"}))
            crew = support.auth("paramedic", "crew-1")
            response = await http.post(
                "/v1/cases",
                json=case_body(),
                headers={**crew, "Idempotency-Key": idempotency_key()},
            )
            assert response.status_code == 201, response.text
            case_id = response.json()["id"]

            async def offered() -> dict[str, object]:
                while True:
                    message: dict[str, object] = json.loads(await socket.recv())
                    if message["type"] == "offer":
                        return message

            offer = await asyncio.wait_for(offered(), 15)
            assert offer["case"]["id"] == case_id  # type: ignore[index]

        coordinator = support.auth("coordinator", "ops-1")

        async def audited() -> bool:
            page = await http.get(
                "/v1/audit/events", params={"subject_id": case_id}, headers=coordinator
            )
            return page.status_code == 200 and bool(page.json()["events"])

        await support.eventually(audited, timeout=15, message=cluster.logs())
        report = await http.get("/v1/reports/redirection", headers=coordinator)
        assert report.status_code == 200
        assert (await http.get("/dashboard")).status_code == 200
        assert (await http.get("/crew")).status_code == 200
        # Closed from outside: events between services, and the metrics.
        for path in ("/internal/triage/events", "/internal/audit/events", "/metrics"):
            response = await http.post(path, json={"events": []})
            assert response.status_code == 404, path
        unknown = await http.get("/v1/nothing-here")
        assert unknown.status_code == 404
        assert unknown.json()["error"] == "not_found"
