"""deploy/ for operations: the Prometheus config and rules pass promtool (its own unit
tests of the alerts included), and every metric a rule or a Grafana panel uses is one the
services really expose."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from services.embedded import EmbeddedSettings, create_app
from services.shared.clock import ManualClock
from tests.support import auth

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
METRIC = re.compile(r"\breach_[a-z0-9_]+\b")
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")

promtool_missing = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (Debian package prometheus): the rules are not checked",
)


def promtool(*args: str) -> str:
    binary = shutil.which("promtool")
    assert binary is not None
    done = subprocess.run(  # noqa: S603 - our own files
        [binary, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@promtool_missing
@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-embedded.yml"])
def test_the_scrape_configs_are_valid(config: str) -> None:
    promtool("check", "config", config)


@promtool_missing
def test_the_rules_are_valid_and_their_unit_tests_pass() -> None:
    promtool("check", "rules", "rules/recording.yml", "rules/alerts.yml")
    assert "SUCCESS" in promtool("test", "rules", "tests/rules_test.yml")


def expressions() -> dict[str, str]:
    """Every PromQL expression in the rules and the dashboard, by where it is."""
    found: dict[str, str] = {}
    for path in (PROMETHEUS / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                found[f"{path.name}:{rule.get('record') or rule.get('alert')}"] = rule["expr"]
    dashboard = json.loads((GRAFANA / "dashboards" / "reach.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            found[f"panel {panel['title']}:{target['refId']}"] = target["expr"]
    return found


def test_the_dashboard_uses_the_provisioned_data_source() -> None:
    provisioned = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    uid = provisioned["datasources"][0]["uid"]
    dashboard = json.loads((GRAFANA / "dashboards" / "reach.json").read_text())
    assert {panel["datasource"]["uid"] for panel in dashboard["panels"]} == {uid}
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for wanted in ("redirection", "pathway", "time to accept", "time to advice", "queue",
                   "oldest", "consultants available", "escalations"):  # fmt: skip
        assert wanted in titles


async def test_every_metric_used_is_one_the_services_expose(
    settings: EmbeddedSettings, clock: ManualClock
) -> None:
    app = create_app(settings, clock=clock)
    async with app.parent.router.lifespan_context(app.parent):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://reach") as http:
            # A verification first, so the trail's verdict is among the metrics.
            verify = await http.get("/v1/audit/verify", headers=auth("coordinator", "ops"))
            assert verify.status_code == 200
            text = (await http.get("/metrics")).text
    exposed = set(re.findall(r"^# TYPE (reach_[a-z0-9_]+) ", text, flags=re.MULTILINE))
    assert exposed, "the app exposed no reach_ metric"
    unknown = {}
    for where, expr in expressions().items():
        for name in METRIC.findall(expr):
            base = next((name.removesuffix(s) for s in SUFFIXES if name.endswith(s)), name)
            if name not in exposed and base not in exposed:
                unknown[where] = name
    assert not unknown, f"rules or panels use metrics nobody exposes: {unknown}"
