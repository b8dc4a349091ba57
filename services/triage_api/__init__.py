"""triage_api: the paramedic-facing service. It validates requests, computes NEWS2 and
priority, owns cases and streams each case's status to its crew."""

SERVICE_NAME = "triage_api"
# Public path prefixes this service answers (the ingress and the embedded app route by them).
ROUTE_PREFIXES = ("/v1/cases", "/crew", "/internal/triage")
