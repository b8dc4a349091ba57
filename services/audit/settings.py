"""audit settings: the shared blocks plus verification and report limits."""

from __future__ import annotations

from pydantic import Field

from services.shared.settings import ServiceSettings


class AuditSettings(ServiceSettings):
    # A full verification of the whole chain runs this often in the background (the
    # on-demand one is incremental, from the last checkpoint).
    audit_full_verify_seconds: float = Field(default=3600.0, gt=0)
    # The longest window a report may cover.
    report_max_days: int = Field(default=400, ge=1, le=3660)
