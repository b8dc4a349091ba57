"""The contract's fixed vocabularies. Values are wire strings: add members, never rename."""

from __future__ import annotations

from enum import StrEnum


class CallCategory(StrEnum):
    C1 = "C1"
    C2 = "C2"
    C3 = "C3"
    C4 = "C4"


class Specialty(StrEnum):
    EMERGENCY_MEDICINE = "emergency_medicine"
    ACUTE_MEDICINE = "acute_medicine"
    FRAILTY = "frailty"
    PAEDIATRICS = "paediatrics"
    MENTAL_HEALTH = "mental_health"
    CARDIOLOGY = "cardiology"
    STROKE = "stroke"
    MATERNITY = "maternity"
    SURGERY = "surgery"


FALLBACK_SPECIALTY = Specialty.EMERGENCY_MEDICINE


class PresentingComplaint(StrEnum):
    FALL = "fall"
    CHEST_PAIN = "chest_pain"
    BREATHING_DIFFICULTY = "breathing_difficulty"
    ABDOMINAL_PAIN = "abdominal_pain"
    COLLAPSE = "collapse"
    STROKE_SYMPTOMS = "stroke_symptoms"
    SEIZURE = "seizure"
    INFECTION = "infection"
    DIABETIC = "diabetic"
    INJURY = "injury"
    MENTAL_HEALTH_CRISIS = "mental_health_crisis"
    PREGNANCY = "pregnancy"
    PALLIATIVE = "palliative"
    OTHER = "other"


class Consciousness(StrEnum):
    """ACVPU: alert, new confusion, responds to voice, to pain, unresponsive."""

    A = "A"
    C = "C"
    V = "V"
    P = "P"
    U = "U"


class Sex(StrEnum):
    FEMALE = "female"
    MALE = "male"
    OTHER = "other"
    UNKNOWN = "unknown"


class Disposition(StrEnum):
    CONVEY_ED = "convey_ed"
    REDIRECT = "redirect"
    HOME = "home"


# Dispositions that keep the patient out of an emergency department: the numerator of
# the redirection rate (CONTRACT.md, "Redirection, defined once").
REDIRECTED_DISPOSITIONS = frozenset({Disposition.REDIRECT, Disposition.HOME})


class Pathway(StrEnum):
    SDEC = "sdec"
    UTC = "utc"
    GP = "gp"
    URGENT_COMMUNITY_RESPONSE = "urgent_community_response"
    MENTAL_HEALTH = "mental_health"
    FALLS = "falls"
    FRAILTY = "frailty"
    HOT_CLINIC = "hot_clinic"
    MATERNITY = "maternity"
    PHARMACY = "pharmacy"
    OTHER = "other"


class RiskFlag(StrEnum):
    CANNOT_WALK = "cannot_walk"
    BREATHLESSNESS = "breathlessness"
    REDUCED_CONSCIOUSNESS = "reduced_consciousness"
    LOW_SPO2 = "low_spo2"
    ABNORMAL_SBP = "abnormal_sbp"
    CHEST_PAIN_CARDIAC = "chest_pain_cardiac"
    HEAD_INJURY_ANTICOAGULATED = "head_injury_anticoagulated"
    SAFEGUARDING = "safeguarding"


class CaseStatus(StrEnum):
    QUEUED = "queued"
    OFFERED = "offered"
    ACCEPTED = "accepted"
    ADVISED = "advised"
    CLOSED = "closed"
    CANCELLED = "cancelled"


# A case may be cancelled from any state before advice is given.
CANCELLABLE_STATUSES = frozenset({CaseStatus.QUEUED, CaseStatus.OFFERED, CaseStatus.ACCEPTED})
OPEN_STATUSES = CANCELLABLE_STATUSES


class CaseEventType(StrEnum):
    """Events on a crew's stream of one case."""

    QUEUED = "queued"
    OFFERED = "offered"
    ACCEPTED = "accepted"
    ADVISED = "advised"
    CLOSED = "closed"
    CANCELLED = "cancelled"
    ESCALATED = "escalated"
    OBSERVATIONS_UPDATED = "observations_updated"


class HandoverFormat(StrEnum):
    ATMIST = "ATMIST"
    SBAR = "SBAR"


class Role(StrEnum):
    PARAMEDIC = "paramedic"
    CONSULTANT = "consultant"
    COORDINATOR = "coordinator"
    ADMIN = "admin"
    # Not a person: a reach service calling another's internal endpoints.
    SERVICE = "service"


class ConsultantStatus(StrEnum):
    AVAILABLE = "available"
    BUSY = "busy"
    AWAY = "away"


class News2Risk(StrEnum):
    LOW = "low"
    LOW_MEDIUM = "low_medium"
    MEDIUM = "medium"
    HIGH = "high"
