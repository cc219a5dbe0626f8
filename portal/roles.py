"""Roles and what each may do: one plain table read by the models, services, routes and templates."""

from __future__ import annotations

OWNER = "owner"
# Most powerful first: the members page lists people in this order.
ROLES: tuple[str, ...] = (OWNER, "admin", "developer", "viewer")
ROLE_RANK: dict[str, int] = {"viewer": 1, "developer": 2, "admin": 3, OWNER: 4}

# The least role each permission needs.
PERMISSIONS: dict[str, str] = {
    "read": "viewer",
    "keys.manage_test": "developer",
    "keys.manage_live": "admin",
    "members.manage": "admin",
    "notifications.manage": "admin",
    "org.settings": OWNER,
}


def role_allows(role: str, permission: str) -> bool:
    return ROLE_RANK[role] >= ROLE_RANK[PERMISSIONS[permission]]


def key_permission(environment: str) -> str:
    """Live keys reach production traffic, so they need more than test keys."""
    return "keys.manage_live" if environment == "live" else "keys.manage_test"


def may_touch_role(actor_role: str, role: str) -> bool:
    """Only an owner can grant, change, remove or invite the owner role."""
    return role != OWNER or actor_role == OWNER


def grantable_roles(actor_role: str) -> tuple[str, ...]:
    """The roles ``actor_role`` may hand out: owners any, everyone else all but owner."""
    return tuple(role for role in ROLES if may_touch_role(actor_role, role))


def may_change_member(actor_role: str, target_role: str) -> bool:
    """Whether a member with ``actor_role`` may change or remove someone holding ``target_role``."""
    return role_allows(actor_role, "members.manage") and may_touch_role(actor_role, target_role)


def is_last_owner(role: str, owner_count: int) -> bool:
    """An organization always keeps one owner, so its last one cannot leave or be demoted."""
    return role == OWNER and owner_count <= 1


def needs_verified_email(role: str) -> bool:
    """Roles that manage members (admin, owner) are only given to accounts whose address is verified."""
    return role_allows(role, "members.manage")
