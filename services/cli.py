"""The `reach` command: serve, migrate, token, demo."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError

from services.shared.auth import mint_token
from services.shared.clock import SystemClock
from services.shared.db import migrate
from services.shared.domain.vocabulary import Role
from services.shared.heap import FreezeAfterStartup
from services.shared.observability import configure_logging
from services.shared.resources import resolve_secrets
from services.shared.settings import DEFAULT_DATA_DIR, ServiceSettings

SERVICES = ("triage-api", "consult-router", "audit")


def _build_app(service: str | None, overrides: dict[str, Any]) -> Any:
    """The app to serve. Services are imported here, on use: `reach token` and
    `reach migrate` need none of them and should not pay for importing them."""
    if service is None:
        from services.embedded import EmbeddedSettings, create_app

        return create_app(EmbeddedSettings(**overrides))
    if service == "triage-api":
        from services.triage_api.app import create_app as create_triage
        from services.triage_api.settings import TriageSettings

        return create_triage(TriageSettings(**overrides))
    if service == "consult-router":
        from services.consult_router.app import create_app as create_router
        from services.consult_router.settings import RouterSettings

        return create_router(RouterSettings(**overrides))
    if service == "audit":
        from services.audit.app import create_app as create_audit
        from services.audit.settings import AuditSettings

        return create_audit(AuditSettings(**overrides))
    raise SystemExit(f"unknown service {service!r}; choose one of {', '.join(SERVICES)}")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Flags that override the environment's settings."""
    overrides: dict[str, Any] = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = args.data_dir
    if getattr(args, "database_url", None):
        overrides["database_url"] = args.database_url
    return overrides


def _settings_from(args: argparse.Namespace) -> ServiceSettings:
    settings = ServiceSettings(**_overrides(args))
    if settings.resolved_database_url().startswith("sqlite"):
        # The first run makes the data folder the SQLite file lives in.
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings_from(args)
    configure_logging(level=settings.log_level, json_lines=settings.log_json)
    url = settings.resolved_database_url()
    if args.service is None or args.migrate:
        migrate.upgrade(url)
    if args.service is None:
        jwt_secret, _ = resolve_secrets(settings)
        _print_banner(args.host, args.port, settings, have_dev_secret=jwt_secret is not None)
    app = FreezeAfterStartup(_build_app(args.service, _overrides(args)))
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=settings.log_level.lower(),
        proxy_headers=True,
        # The sans-I/O websockets implementation: maintained, and lighter per message.
        ws="websockets-sansio",
        ws_max_size=settings.websocket_max_message_bytes * 4,
        ws_per_message_deflate=settings.websocket_compression,
    )
    return 0


def _print_banner(
    host: str, port: int, settings: ServiceSettings, *, have_dev_secret: bool
) -> None:
    base = f"http://{host}:{port}"
    lines = [
        "",
        "reach is starting (embedded: every service in one process)",
        f"  data folder   {settings.data_dir.resolve()}",
        f"  dashboard     {base}/dashboard     (consultants; demo sign-in on this machine)",
        f"  crew page     {base}/crew          (a paramedic's view, for demos and training)",
        f"  API           {base}/v1/cases      docs at {base}/docs",
        f"  health        {base}/healthz   {base}/readyz   {base}/metrics",
    ]
    if have_dev_secret:
        data_dir = (
            "" if settings.data_dir == DEFAULT_DATA_DIR else f" --data-dir {settings.data_dir}"
        )
        lines += [
            "",
            "  a token for a paramedic (the development signing key is in the data folder):",
            "    .venv/bin/reach token --role paramedic --sub crew-ne23 --name 'NE23 crew'"
            + data_dir,
            "",
            "  fill the dashboard with synthetic cases and consultants: make demo",
        ]
    print("\n".join(lines) + "\n", flush=True)


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings_from(args)
    url = settings.resolved_database_url()
    if args.down:
        migrate.downgrade(url, args.revision)
    else:
        migrate.upgrade(url, args.revision)
    print(f"database is at revision {args.revision}")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    settings = _settings_from(args)
    secret, _ = resolve_secrets(settings)
    if secret is None:
        print(
            "tokens come from the identity provider when REACH_JWT_JWKS_URL is set", file=sys.stderr
        )
        return 2
    token = mint_token(
        secret,
        sub=args.sub,
        role=args.role,
        name=args.name,
        clock=SystemClock(),
        ttl=timedelta(hours=args.hours),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )
    print(token)
    return 0


async def _serve_and_demo(options: Any, *, data_dir: Path, port: int) -> Any:
    """Start the embedded default in this process, then run the demo against it. (Here,
    not in the demo: the demo is a client of reach and imports no service.)"""
    import asyncio
    import contextlib

    from services.demo.run import run_demo
    from services.embedded import EmbeddedSettings, create_app

    app = create_app(EmbeddedSettings(data_dir=data_dir))
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", ws="websockets-sansio"
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(200):
            if server.started:
                break
            if serving.done():
                serving.result()
            await asyncio.sleep(0.05)
        print(f"reach is running here: the dashboard is at {options.url}/dashboard", flush=True)
        return await run_demo(options)
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serving, timeout=15)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reach", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run reach (all services, or one)")
    serve.add_argument("service", nargs="?", choices=SERVICES, help="run one service alone")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--data-dir", type=Path, help="data folder (default ./reach-data)")
    serve.add_argument("--database-url", help="overrides REACH_DATABASE_URL")
    serve.add_argument(
        "--migrate",
        action="store_true",
        help="with one service: migrate first (embedded always does)",
    )
    serve.set_defaults(handler=cmd_serve)

    migrate_cmd = commands.add_parser("migrate", help="bring the database to the newest schema")
    migrate_cmd.add_argument("revision", nargs="?", default="head")
    migrate_cmd.add_argument("--down", action="store_true", help="downgrade to the revision")
    migrate_cmd.add_argument("--data-dir", type=Path)
    migrate_cmd.add_argument("--database-url")
    migrate_cmd.set_defaults(handler=cmd_migrate)

    token = commands.add_parser("token", help="print a signed development token")
    token.add_argument(
        "--role", required=True, choices=[r.value for r in Role if r != Role.SERVICE]
    )
    token.add_argument("--sub", required=True, help="the subject: a crew, consultant or user id")
    token.add_argument("--name", help="display name (default: the subject)")
    token.add_argument("--hours", type=float, default=12.0, help="lifetime (default 12)")
    token.add_argument("--data-dir", type=Path)
    token.set_defaults(handler=cmd_token)

    demo = commands.add_parser(
        "demo", help="seed a rota and send synthetic cases, with simulated consultants"
    )
    demo.add_argument("--url", default="http://127.0.0.1:8000", help="a running reach; "
                      "if nothing answers there, the embedded default is started here")  # fmt: skip
    demo.add_argument("--rate", type=float, default=120.0, help="cases per hour (default 120)")
    demo.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    demo.add_argument("--no-consultants", action="store_true", help="no simulated consultants")
    demo.add_argument("--speed", type=float, default=1.0, help="compress human pauses (10 = 10x)")
    demo.add_argument("--seed", type=int, default=2026)
    demo.add_argument("--data-dir", type=Path)
    demo.set_defaults(handler=cmd_demo)
    return parser


def cmd_demo(args: argparse.Namespace) -> int:
    import asyncio

    from services.demo.run import DemoOptions, reachable, run_demo

    settings = _settings_from(args)
    secret, _ = resolve_secrets(settings)
    if secret is None:
        raise SystemExit("the demo signs development tokens: it needs REACH_JWT_SECRET")
    if args.rate <= 0 or args.duration <= 0 or args.speed <= 0:
        raise SystemExit("--rate, --duration and --speed must be positive")
    options = DemoOptions(
        url=args.url.rstrip("/"), rate_per_hour=args.rate, duration_seconds=args.duration,
        simulate_consultants=not args.no_consultants, seed=args.seed, speed=args.speed,
        jwt_secret=secret,
    )  # fmt: skip
    print(
        f"demo: {args.rate:g} cases an hour for {args.duration:g} s; sign in at "
        f"{options.url}/dashboard as Dr Amara Okafor to take cases yourself",
        flush=True,
    )
    if asyncio.run(reachable(options.url)):
        result = asyncio.run(run_demo(options))
    else:
        port = int(options.url.rsplit(":", 1)[1]) if options.url.count(":") == 2 else 8000
        migrate.upgrade(settings.resolved_database_url())
        result = asyncio.run(_serve_and_demo(options, data_dir=settings.data_dir, port=port))
    tally, consistency = result.tally, result.consistency
    print(f"demo done: {len(tally.submitted)} cases submitted, {len(tally.advised)} advised by "
          f"simulated consultants, {len(tally.acknowledged)} acknowledged, "
          f"{tally.deteriorated} deteriorated")  # fmt: skip
    for key, value in consistency.items():
        print(f"  {key:<30} {value}")
    healthy = consistency["every_case_accounted_for"] and consistency["trail_verifies"]
    return 0 if healthy and consistency["report_matches"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (DBAPIError, OSError) as exc:
        # A database that is down or a folder we may not write: say so, without a traceback.
        print(
            f"reach: {type(exc).__name__}: cannot use the database or data folder", file=sys.stderr
        )
        return 1
    except ValidationError as exc:
        print(f"reach: the settings are not valid:\n{exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
