"""consult_router: the consultant-facing service. It owns the rota, consultant presence,
offers, consults, escalation timers and the consultants' live dashboard, and gets every
waiting crew a consultant."""

SERVICE_NAME = "consult_router"
ROUTE_PREFIXES = (
    "/v1/consultant",
    "/v1/offers",
    "/v1/consults",
    "/v1/queue",
    "/v1/consultants",
    "/v1/shifts",
    "/v1/oncall",
    "/dashboard",
    "/internal/router",
)
