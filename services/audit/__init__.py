"""audit: the append-only, hash-chained trail of every state change and every read of a
case; one disposition record per case; redirection reports and metrics."""

SERVICE_NAME = "audit"
# Public path prefixes this service answers (the ingress and the embedded app route by them).
ROUTE_PREFIXES = ("/v1/audit", "/v1/reports", "/internal/audit")
