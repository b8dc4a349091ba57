"""Every ORM model of every service, on one metadata for one migration history.

Tables carry their owner's prefix; only the owner reads or writes them.
"""

from services.shared.db.base import Base
from services.shared.db.models.audit import (
    AuditChainHead,
    AuditCheckpoint,
    AuditDisposition,
    AuditEntry,
    AuditInbox,
)
from services.shared.db.models.consult import (
    ConsultCase,
    ConsultConnection,
    ConsultConsult,
    ConsultConsultant,
    ConsultInbox,
    ConsultMessage,
    ConsultOffer,
    ConsultOutbox,
    ConsultShift,
)
from services.shared.db.models.triage import (
    TriageCase,
    TriageCaseEvent,
    TriageInbox,
    TriageObservation,
    TriageOutbox,
)

__all__ = [
    "AuditChainHead",
    "AuditCheckpoint",
    "AuditDisposition",
    "AuditEntry",
    "AuditInbox",
    "Base",
    "ConsultCase",
    "ConsultConnection",
    "ConsultConsult",
    "ConsultConsultant",
    "ConsultInbox",
    "ConsultMessage",
    "ConsultOffer",
    "ConsultOutbox",
    "ConsultShift",
    "TriageCase",
    "TriageCaseEvent",
    "TriageInbox",
    "TriageObservation",
    "TriageOutbox",
]
