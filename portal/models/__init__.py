"""Every model, imported here so Alembic's autogenerate sees every table."""

from portal.models.account_token import AccountToken
from portal.models.api_key import ENVIRONMENTS, KEY_STATUSES, ApiKey
from portal.models.audit import AuditEvent
from portal.models.mail import OutboxMail
from portal.models.notification import (
    NotificationEvent,
    NotificationRule,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from portal.models.organization import Invitation, Membership, Organization
from portal.models.rollup import (
    UsageClientPending,
    UsageEndpointHourly,
    UsageKeyClientsDaily,
    UsageKeyClientsHourly,
    UsageKeyDaily,
    UsageKeyEndpointDaily,
    UsageKeyHourly,
    UsageOrgHourly,
    UsageRollupPending,
)
from portal.models.session import SecurityEvent, UserSession
from portal.models.two_factor import Passkey, RecoveryCode, SpentPasskeyChallenge, TotpCredential
from portal.models.usage import OUTCOMES, ApiKeyUsage, InvalidKeyCount, RateLimitTracking, UsageSpillReplay
from portal.models.user import User

__all__ = [
    "ENVIRONMENTS",
    "KEY_STATUSES",
    "OUTCOMES",
    "AccountToken",
    "ApiKey",
    "ApiKeyUsage",
    "AuditEvent",
    "InvalidKeyCount",
    "Invitation",
    "Membership",
    "NotificationEvent",
    "NotificationRule",
    "Organization",
    "OutboxMail",
    "Passkey",
    "SpentPasskeyChallenge",
    "RateLimitTracking",
    "SecurityEvent",
    "RecoveryCode",
    "TotpCredential",
    "UsageClientPending",
    "UsageEndpointHourly",
    "UsageKeyClientsDaily",
    "UsageKeyClientsHourly",
    "UsageKeyDaily",
    "UsageKeyEndpointDaily",
    "UsageKeyHourly",
    "UsageOrgHourly",
    "UsageRollupPending",
    "UsageSpillReplay",
    "User",
    "UserSession",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
]
