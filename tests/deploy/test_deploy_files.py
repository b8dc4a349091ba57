"""The deployment files: Kubernetes manifests against the Kubernetes schemas, the compose
file against the Compose specification, and both — with the nginx config — against what
the services really serve: every public prefix routed to the service that answers it, no
internal path exposed, and each service allowed to reach exactly the peers it calls."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from compose_spec import PyCompose

from services.audit import ROUTE_PREFIXES as AUDIT_PREFIXES
from services.consult_router import ROUTE_PREFIXES as ROUTER_PREFIXES
from services.shared.clients.peers import Peer
from services.shared.settings import ServiceSettings
from services.triage_api import ROUTE_PREFIXES as TRIAGE_PREFIXES

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SERVICES_DIR = DEPLOY.parent / "services"
KUBERNETES_VERSION = "1.33.0"

# The deployed name of each service, and the package whose code it runs.
DEPLOYED = {"triage-api": "triage_api", "consult-router": "consult_router", "audit": "audit"}


def public_prefixes() -> dict[str, str]:
    """Every public path prefix and the deployed service that answers it."""
    owners = {
        "triage-api": TRIAGE_PREFIXES,
        "consult-router": ROUTER_PREFIXES,
        "audit": AUDIT_PREFIXES,
    }
    return {
        prefix: service
        for service, prefixes in owners.items()
        for prefix in prefixes
        if not prefix.startswith("/internal")
    }


def manifests() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                yield path.name, document


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [document for _, document in manifests() if document["kind"] == kind]


def peers_called_by(package: str) -> set[str]:
    """The peers a service's code posts events to, read from its source."""
    source = "\n".join(p.read_text() for p in (SERVICES_DIR / package).rglob("*.py"))
    names = set(re.findall(r"Peer\.([A-Z_]+)", source))
    return {Peer[name].value for name in names} - {package}


class TestKubernetes:
    @pytest.mark.parametrize(
        ("name", "document"),
        [pytest.param(n, d, id=f"{n}:{d['kind']}/{d['metadata']['name']}") for n, d in manifests()],
    )
    def test_every_manifest_is_valid_for_the_kubernetes_schema(
        self, name: str, document: dict[str, Any]
    ) -> None:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)

    def test_kustomization_lists_every_manifest_but_the_migration_job(self) -> None:
        listed = set(
            yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())["resources"]
        )
        on_disk = {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
        # The Job runs first, on its own, so a failed migration stops the rollout.
        assert listed == on_disk - {"migrate-job.yaml"}

    def test_each_service_is_deployed_with_probes_limits_and_no_root(self) -> None:
        deployments = {d["metadata"]["name"]: d for d in of_kind("Deployment")}
        assert set(deployments) == set(DEPLOYED)
        for name, deployment in deployments.items():
            pod = deployment["spec"]["template"]["spec"]
            (container,) = pod["containers"]
            assert container["args"][:2] == ["serve", name]
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert {"cpu", "memory"} <= set(container["resources"]["requests"])
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    def test_each_deployment_has_a_service_an_autoscaler_and_a_disruption_budget(self) -> None:
        for name in DEPLOYED:
            labels = {"app.kubernetes.io/name": name}
            (service,) = [s for s in of_kind("Service") if s["metadata"]["name"] == name]
            assert service["spec"]["selector"] == labels
            (hpa,) = [
                h for h in of_kind("HorizontalPodAutoscaler") if h["metadata"]["name"] == name
            ]
            assert hpa["spec"]["scaleTargetRef"]["name"] == name
            assert hpa["spec"]["minReplicas"] >= 2
            (pdb,) = [p for p in of_kind("PodDisruptionBudget") if p["metadata"]["name"] == name]
            assert pdb["spec"]["selector"]["matchLabels"] == labels

    def test_the_ingress_routes_every_public_prefix_and_nothing_internal(self) -> None:
        (ingress,) = of_kind("Ingress")
        routed = {
            path["path"]: path["backend"]["service"]["name"]
            for rule in ingress["spec"]["rules"]
            for path in rule["http"]["paths"]
        }
        assert routed == public_prefixes()

    def test_network_policies_let_each_service_reach_only_the_peers_it_calls(self) -> None:
        policies = of_kind("NetworkPolicy")
        assert any(
            p["spec"]["podSelector"] == {}
            and not p["spec"].get("ingress")
            and not p["spec"].get("egress")
            for p in policies
        ), "no default deny"
        for deployed, package in DEPLOYED.items():
            allowed: set[str] = set()
            for policy in policies:
                selector = policy["spec"]["podSelector"].get("matchLabels", {})
                if selector.get("app.kubernetes.io/name") != deployed:
                    continue
                for rule in policy["spec"].get("egress", []):
                    for peer in rule["to"]:
                        allowed.add(peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"])
            expected = {name for name, pkg in DEPLOYED.items() if pkg in peers_called_by(package)}
            assert allowed == expected, deployed

    def test_settings_in_the_config_map_are_real_settings(self) -> None:
        (config,) = of_kind("ConfigMap")
        assert_known_settings(config["data"])


def assert_known_settings(environment: dict[str, Any]) -> None:
    known = {f"REACH_{name.upper()}" for name in ServiceSettings.model_fields}
    service_specific = {"REACH_OFFER_TIMEOUT_SECONDS", "REACH_ESCALATE_AFTER_SECONDS"}
    unknown = {key for key in environment if key.startswith("REACH_")} - known - service_specific
    assert not unknown


class TestCompose:
    def compose(self) -> dict[str, Any]:
        loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
        return loaded

    def test_the_compose_file_follows_the_compose_specification(self) -> None:
        # PyYAML resolves the `<<` merge keys that Compose understands; the validator
        # then sees the file as Compose does.
        PyCompose.from_json(json.dumps(self.compose()))

    def test_a_broken_compose_file_is_caught(self) -> None:
        # The check above can fail: the validator refuses what the specification refuses.
        with pytest.raises(ValueError, match="ports"):
            PyCompose.from_yaml("services:\n  web:\n    image: x\n    ports: 12\n")

    def test_each_service_runs_after_the_migration_with_known_settings(self) -> None:
        services = self.compose()["services"]
        for name in DEPLOYED:
            service = services[name]
            assert service["command"][:2] == ["serve", name]
            assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
            assert_known_settings(service["environment"])
        assert services["migrate"]["command"] == ["migrate"]

    def test_files_the_compose_file_mounts_exist(self) -> None:
        for service in self.compose()["services"].values():
            for volume in service.get("volumes", []):
                source = volume.split(":", 1)[0]
                if source.startswith("."):
                    assert (DEPLOY / source).exists(), source


class TestNginx:
    conf = (DEPLOY / "nginx" / "reach.conf").read_text()

    def routed(self) -> dict[str, str]:
        pattern = r"location\s+(/[\w/-]*)\s*\{\s*proxy_pass\s+http://reach_(\w+);"
        return {
            prefix: upstream.replace("_", "-")
            for prefix, upstream in re.findall(pattern, self.conf)
        }

    def test_nginx_routes_every_public_prefix_to_its_service(self) -> None:
        routed = self.routed()
        for prefix, service in public_prefixes().items():
            # nginx prefix locations: `/v1/consultant` also serves `/v1/consultants`.
            owner = max((p for p in routed if prefix.startswith(p)), key=len)
            assert routed[owner] == service, prefix

    def test_internal_paths_and_metrics_are_closed(self) -> None:
        assert re.search(r"location /internal/ \{ return 404; \}", self.conf)
        assert re.search(r"location = /metrics \{ return 404; \}", self.conf)

    @pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
    def test_nginx_accepts_the_config(self, tmp_path: Path) -> None:
        # Upstream names resolve only inside compose; check the syntax with loopback ones.
        conf = re.sub(r"server [\w-]+:8000;", "server 127.0.0.1:8000;", self.conf)
        main = tmp_path / "nginx.conf"
        main.write_text(
            f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
            f"http {{\n{conf.replace('access_log /dev/stdout;', 'access_log off;')}\n}}\n"
        )
        nginx = shutil.which("nginx")
        assert nginx is not None
        subprocess.run([nginx, "-t", "-q", "-c", str(main), "-p", str(tmp_path)], check=True)  # noqa: S603


class TestDockerfile:
    text = (DEPLOY / "Dockerfile").read_text()

    def test_the_image_is_built_in_stages_and_runs_as_an_unprivileged_user(self) -> None:
        stages = re.findall(r"^FROM .* AS (\w+)$", self.text, flags=re.MULTILINE)
        assert len(stages) >= 2
        final = self.text.split(f"AS {stages[-1]}", 1)[1]
        user = re.findall(r"^USER (\S+)$", final, flags=re.MULTILINE)
        assert user, "the final stage sets no USER"
        assert not user[-1].startswith(("0", "root"))

    def test_no_development_tools_are_installed(self) -> None:
        assert "[dev]" not in self.text
        assert "pip install ." in self.text
