"""The role table on its own: no request, no database."""

from __future__ import annotations

import pytest

from portal import roles


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        ("viewer", {"read"}),
        ("developer", {"read", "keys.manage_test"}),
        ("admin", {"read", "keys.manage_test", "keys.manage_live", "members.manage", "notifications.manage"}),
        ("owner", set(roles.PERMISSIONS)),
    ],
)
def test_each_role_has_exactly_its_permissions(role, allowed):
    assert {p for p in roles.PERMISSIONS if roles.role_allows(role, p)} == allowed


def test_live_keys_need_more_than_test_keys():
    assert roles.key_permission("live") == "keys.manage_live"
    assert roles.key_permission("test") == "keys.manage_test"


def test_only_an_owner_hands_out_or_touches_the_owner_role():
    assert roles.grantable_roles("owner") == roles.ROLES
    assert roles.grantable_roles("admin") == ("admin", "developer", "viewer")
    assert roles.may_touch_role("admin", "developer") and not roles.may_touch_role("admin", "owner")
    assert roles.may_change_member("owner", "owner") and not roles.may_change_member("admin", "owner")
    assert not roles.may_change_member("developer", "viewer")


def test_the_last_owner_stays():
    assert roles.is_last_owner("owner", 1)
    assert not roles.is_last_owner("owner", 2)
    assert not roles.is_last_owner("admin", 1)
