"""What every reach service needs: domain rules, settings, database, auth, errors,
observability, the transactional outbox and the typed clients between services.

This package imports no service; services import it and never each other.
"""
