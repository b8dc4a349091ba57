"""Serving the browser pages (the crew's view, the consultants' dashboard) from the app
itself: no CDN, nothing fetched from elsewhere, a strict Content-Security-Policy."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from starlette.staticfiles import StaticFiles

COMMON_ASSETS = Path(__file__).parent / "webui"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; connect-src 'self' ws: wss:; "
    "img-src 'self' data:; style-src 'self' 'unsafe-inline'; media-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def mount_page(app: FastAPI, *, prefix: str, html: Path, assets: Path) -> None:
    """Serve `html` at `prefix`, its own assets under `prefix/assets/`, and the shared
    ones under `prefix/assets/common/`."""

    async def page() -> FileResponse:
        return FileResponse(html, media_type="text/html", headers=_PAGE_HEADERS)

    async def slash() -> RedirectResponse:
        return RedirectResponse(prefix, status_code=308)

    app.add_api_route(prefix, page, methods=["GET"], include_in_schema=False)
    app.add_api_route(prefix + "/", slash, methods=["GET"], include_in_schema=False)
    app.mount(
        prefix + "/assets/common", StaticFiles(directory=COMMON_ASSETS), name=f"{prefix}-common"
    )
    app.mount(prefix + "/assets", StaticFiles(directory=assets), name=f"{prefix}-assets")
