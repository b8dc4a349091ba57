"""consult_router's queries, one module per aggregate. Nothing else writes SQL."""
