"""DESIGN.md's import rule: a service imports `services.shared` and never another
service; `services.shared` imports no service. Checked on the source, so a new service
package is covered the day it is added."""

from __future__ import annotations

import ast
from pathlib import Path

import services

ROOT = Path(services.__file__).parent
SERVICE_PACKAGES = sorted(
    p.name
    for p in ROOT.iterdir()
    if p.is_dir() and (p / "__init__.py").exists() and p.name != "shared"
)
# The composition roots put the services together; they are not services themselves.
COMPOSITION_ROOTS = {"embedded.py", "cli.py"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def violations(package: str, forbidden: set[str]) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for module in imported_modules(path):
            parts = module.split(".")
            if len(parts) >= 2 and parts[0] == "services" and parts[1] in forbidden:
                found.append(f"{path.relative_to(ROOT.parent)} imports {module}")
    return found


class TestImportRule:
    def test_there_are_services_to_check(self) -> None:
        assert "triage_api" in SERVICE_PACKAGES

    def test_a_service_imports_no_other_service(self) -> None:
        problems = []
        for package in SERVICE_PACKAGES:
            others = set(SERVICE_PACKAGES) - {package}
            others |= {name.removesuffix(".py") for name in COMPOSITION_ROOTS}
            problems += violations(package, others)
        assert problems == []

    def test_shared_imports_no_service(self) -> None:
        forbidden = set(SERVICE_PACKAGES) | {n.removesuffix(".py") for n in COMPOSITION_ROOTS}
        assert violations("shared", forbidden) == []

    def test_the_checker_catches_a_violation(self, tmp_path: Path) -> None:
        offender = tmp_path / "bad.py"
        offender.write_text("from services.triage_api import service\n", encoding="utf-8")
        assert "services.triage_api" in imported_modules(offender)
