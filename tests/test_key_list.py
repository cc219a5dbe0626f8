"""The key list at scale: search, filters, sort orders, pagination that keeps them, and revoking a selection."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.keys import listing
from portal.keys import services as key_services
from portal.keys.policy import KeyPolicy
from portal.models import KEY_STATUSES, AuditEvent
from tests import factories
from tests.api_helpers import verify

NAME = re.compile(r'<a href="/orgs/[^/]+/keys/[0-9a-f-]{36}">([^<]+)</a>')


@pytest.fixture
def big(owner):
    """An Enterprise organization (room for many keys) that ``owner`` owns."""
    organization = factories.org(plan="enterprise")
    factories.member(organization, "owner", owner)
    return organization


def listed(client, org, **args) -> list[str]:
    """The key names the list shows, in order."""
    response = client.get(f"/orgs/{org.slug}/keys/", query_string=args)
    assert response.status_code == 200
    return NAME.findall(response.get_data(as_text=True))


def make(org, actor, name, **kwargs):
    return factories.api_key(org, actor, name=name, **kwargs).api_key


def set_row(api_key, **values):
    for field, value in values.items():
        setattr(api_key, field, value)
    db.session.commit()


def statuses_fixture(org, actor):
    """One key in each status, named after it."""
    now = datetime.now(UTC)
    make(org, actor, "active")
    rolled = make(org, actor, "expiring")
    replacement = key_services.roll_key(org, rolled, timedelta(hours=1), actor).api_key
    set_row(replacement, name="active replacement")
    set_row(make(org, actor, "expired"), expires_at=now - timedelta(days=1))
    key_services.revoke_key(org, make(org, actor, "revoked"), actor)


def test_status_labels_cover_the_model_statuses():
    assert tuple(listing.STATUS_LABELS) == KEY_STATUSES


@pytest.mark.parametrize("status", KEY_STATUSES)
def test_status_filter_shows_keys_the_list_marks_with_that_status(client, auth, big, owner, status):
    statuses_fixture(big, owner)
    auth.login(owner)
    body = client.get(f"/orgs/{big.slug}/keys/", query_string={"status": status}).get_data(as_text=True)
    expected = {"active", "active replacement"} if status == "active" else {status}
    assert set(NAME.findall(body)) == expected
    assert set(re.findall(r'class="badge status-(\w+)"', body)) == {status}


def test_environment_filter(client, auth, big, owner):
    make(big, owner, "in test")
    make(big, owner, "in live", environment="live")
    auth.login(owner)
    assert listed(client, big, env="live") == ["in live"]
    assert listed(client, big, env="test") == ["in test"]


def test_creator_filter_offers_members_who_created_keys(client, auth, big, owner):
    colleague = factories.member(big, "developer", factories.user(name="Colleague Carla"))
    factories.member(big, "viewer", factories.user(name="Viewer Vic"))
    make(big, owner, "by owner")
    make(big, colleague, "by colleague")
    auth.login(owner)
    body = client.get(f"/orgs/{big.slug}/keys/").get_data(as_text=True)
    assert f'<option value="{colleague.id}">Colleague Carla</option>' in body
    assert "Viewer Vic" not in body  # created no key
    assert listed(client, big, creator=str(colleague.id)) == ["by colleague"]


def test_scope_filter_and_full_access(client, auth, big, owner):
    make(big, owner, "full")
    make(big, owner, "reader", key_policy=KeyPolicy(scopes=["files:read", "search:read"]))
    make(big, owner, "writer", key_policy=KeyPolicy(scopes=["files:write"]))
    auth.login(owner)
    assert listed(client, big, scope="full") == ["full"]
    assert listed(client, big, scope="files:read") == ["reader"]
    assert listed(client, big, scope="files:write") == ["writer"]


def test_filters_combine_with_search_and_count_the_matches(client, auth, big, owner):
    make(big, owner, "billing test")
    make(big, owner, "billing live", environment="live")
    make(big, owner, "search live", environment="live")
    auth.login(owner)
    body = client.get(f"/orgs/{big.slug}/keys/", query_string={"q": "billing", "env": "live"}).get_data(as_text=True)
    assert NAME.findall(body) == ["billing live"]
    assert "<strong>1</strong> key matches" in body
    assert "Clear filters" in body
    unfiltered = client.get(f"/orgs/{big.slug}/keys/").get_data(as_text=True)
    assert "<strong>3</strong> keys" in unfiltered and "Clear filters" not in unfiltered


def test_search_finds_a_key_by_its_external_id(client, auth, big, owner):
    make(big, owner, "mapped", key_policy=KeyPolicy(external_id="cust_42"))
    make(big, owner, "other", key_policy=KeyPolicy(external_id="cust-43"))
    auth.login(owner)
    assert listed(client, big, q="CUST_42") == ["mapped"]
    # "_" is a literal underscore, not a wildcard ("ust-43" would match one); no key hint contains "ust_"
    assert listed(client, big, q="ust_") == ["mapped"]


def test_sort_orders(client, auth, big, owner):
    now = datetime.now(UTC)
    first, second, third = (make(big, owner, name) for name in ("first", "second", "third"))
    for age, api_key in enumerate((third, second, first)):
        set_row(api_key, created_at=now - timedelta(days=age))
    set_row(first, last_used_at=now - timedelta(minutes=5))
    set_row(third, last_used_at=now - timedelta(hours=5))
    auth.login(owner)
    assert listed(client, big) == ["third", "second", "first"]
    assert listed(client, big, sort="newest") == ["third", "second", "first"]
    assert listed(client, big, sort="oldest") == ["first", "second", "third"]
    assert listed(client, big, sort="last_used") == ["first", "third", "second"]  # never used comes last


def test_pages_keep_filters_and_sort_and_never_overlap(client, auth, big, owner):
    for n in range(25):
        make(big, owner, f"live-{n:02d}", environment="live")
    make(big, owner, "a test key")
    auth.login(owner)
    first = client.get(f"/orgs/{big.slug}/keys/", query_string={"env": "live", "sort": "oldest"})
    body = first.get_data(as_text=True)
    assert "Page 1 of 2" in body and "<strong>25</strong> keys match" in body
    next_link = re.search(r'href="([^"]+)" rel="next"', body).group(1).replace("&amp;", "&")
    assert "env=live" in next_link and "sort=oldest" in next_link and "page=2" in next_link
    second = client.get(next_link).get_data(as_text=True)
    assert "Page 2 of 2" in second
    on_first, on_second = NAME.findall(body), NAME.findall(second)
    assert len(on_first) == 20 and len(on_second) == 5
    assert sorted(on_first + on_second) == [f"live-{n:02d}" for n in range(25)]


@pytest.mark.parametrize(
    "args",
    [
        {"env": "staging"},
        {"status": "zombie"},
        {"creator": "not-a-uuid"},
        {"creator": "6f1c3b1e-2f0a-4c1e-9b9e-000000000000"},
        {"scope": "files:delete"},
        {"sort": "name; DROP TABLE api_keys"},
        {"page": "-3"},
        {"page": "99999999999999999999"},
        {"q": "x" * 5000},
        {"q": "%_\\"},
    ],
)
def test_bad_parameters_show_the_list_with_a_message_never_a_500(client, auth, big, owner, args):
    make(big, owner, "still listed")
    auth.login(owner)
    response = client.get(f"/orgs/{big.slug}/keys/", query_string=args)
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    name, value = next(iter(args.items()))
    if name in ("env", "status", "creator", "scope", "sort"):
        assert "that filter is ignored" in body
        assert NAME.findall(body) == ["still listed"]


def test_another_orgs_member_is_no_creator_choice(client, auth, big, owner):
    other = factories.org(plan="enterprise")
    stranger = factories.member(other, "owner")
    make(other, stranger, "theirs")
    make(big, owner, "ours")
    auth.login(owner)
    body = client.get(f"/orgs/{big.slug}/keys/", query_string={"creator": str(stranger.id)}).get_data(as_text=True)
    assert "that filter is ignored" in body and NAME.findall(body) == ["ours"]


# -- revoking a selection -----------------------------------------------------------------------------------


def select(client, org, keys, back=None):
    data = {"key": [str(k.id) for k in keys]}
    if back:
        data["back"] = back
    return client.post(f"/orgs/{org.slug}/keys/revoke-selected", data=data)


def confirm(client, org, keys, back=None):
    data = {"key": [str(k) if isinstance(k, str) else str(k.id) for k in keys]}
    if back:
        data["back"] = back
    return client.post(f"/orgs/{org.slug}/keys/revoke-selected/confirm", data=data)


def test_list_offers_checkboxes_only_for_keys_the_member_may_revoke(client, auth, big, owner):
    developer = factories.member(big, "developer")
    test_key = make(big, owner, "test one")
    live_key = make(big, owner, "live one", environment="live")
    gone = make(big, owner, "gone")
    key_services.revoke_key(big, gone, owner)
    auth.login(developer)
    body = client.get(f"/orgs/{big.slug}/keys/").get_data(as_text=True)
    assert f'name="key" value="{test_key.id}"' in body
    assert f'name="key" value="{live_key.id}"' not in body
    assert f'name="key" value="{gone.id}"' not in body
    assert "Revoke selected keys" in body


def test_viewer_gets_no_checkboxes_and_cannot_revoke_a_selection(client, auth, big, owner):
    viewer = factories.member(big, "viewer")
    api_key = make(big, owner, "kept")
    auth.login(viewer)
    body = client.get(f"/orgs/{big.slug}/keys/").get_data(as_text=True)
    assert 'name="key"' not in body and "Revoke selected keys" not in body
    assert select(client, big, [api_key]).status_code == 403
    assert confirm(client, big, [api_key]).status_code == 403
    db.session.refresh(api_key)
    assert api_key.revoked_at is None


def test_confirmation_page_lists_the_selection_and_changes_nothing(client, auth, big, owner):
    now = datetime.now(UTC)
    used = make(big, owner, "Used key", environment="live")
    set_row(used, last_used_at=now.replace(microsecond=0) - timedelta(hours=2))
    unused = make(big, owner, "Unused key")
    auth.login(owner)
    response = select(client, big, [used, unused])
    body = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "Revoke 2 keys?" in body and "stop working at once" in body and "cannot be undone" in body
    for api_key in (used, unused):
        assert api_key.name in body and api_key.hint in body
        assert f'<input type="hidden" name="key" value="{api_key.id}">' in body
    assert used.last_used_at.strftime("%Y-%m-%d %H:%M UTC") in body and "Never" in body
    assert "env-live" in body and "env-test" in body
    for api_key in (used, unused):
        db.session.refresh(api_key)
        assert api_key.revoked_at is None


def test_confirming_revokes_all_in_one_go_with_an_audit_event_each(client, auth, big, owner):
    issued = [factories.api_key(big, owner, name=f"worker {n}") for n in range(3)]
    keep = factories.api_key(big, owner, name="keep")
    auth.login(owner)
    back = f"/orgs/{big.slug}/keys/?env=test&sort=oldest"
    response = confirm(client, big, [i.api_key for i in issued] + [issued[0].api_key], back=back)  # one twice
    assert response.status_code == 302 and response.headers["Location"] == back
    for i in issued:
        db.session.refresh(i.api_key)
        assert i.api_key.status_at(datetime.now(UTC)) == "revoked" and i.api_key.revoked_by_id == owner.id
        assert verify(client, i.plaintext).get_json()["code"] == "revoked"
    assert verify(client, keep.plaintext).status_code == 200
    events = db.session.scalars(
        sa.select(AuditEvent).where(AuditEvent.organization_id == big.id, AuditEvent.action == "key.revoked")
    ).all()
    assert sorted(e.target_id for e in events) == sorted(str(i.api_key.id) for i in issued)
    assert all(e.actor_id == owner.id for e in events)
    page = client.get(back).get_data(as_text=True)
    assert "3 keys revoked" in page


def test_selection_with_foreign_revoked_and_unpermitted_keys_revokes_only_the_rest(client, auth, big, owner):
    developer = factories.member(big, "developer")
    other = factories.org(plan="enterprise")
    foreign = make(other, factories.member(other, "owner"), "foreign")
    mine = make(big, owner, "mine")
    live = make(big, owner, "live", environment="live")
    already = make(big, owner, "already")
    key_services.revoke_key(big, already, owner)
    revoked_at = already.revoked_at
    auth.login(developer)
    selection = [foreign, mine, live, already]
    page = select(client, big, selection).get_data(as_text=True)
    assert "Revoke 1 key?" in page and "foreign" not in page
    assert "Already revoked or expired" in page and "your role (developer) cannot revoke" in page
    response = confirm(client, big, [*selection, "not-a-uuid"])
    assert response.status_code == 302
    for api_key in (foreign, live, already, mine):
        db.session.refresh(api_key)
    assert mine.revoked_at is not None
    assert foreign.revoked_at is None and live.revoked_at is None and already.revoked_at == revoked_at
    flashed = client.get(f"/orgs/{big.slug}/keys/").get_data(as_text=True)
    assert "1 key revoked" in flashed
    assert "4 keys left as they were: 1 already revoked or expired, 1 live" in flashed
    assert "2 not found in" in flashed  # the other organization's key and the malformed id
    assert db.session.scalar(sa.select(sa.func.count()).where(AuditEvent.action == "key.revoked")) == 2


def test_nothing_selected_or_too_much_selected_goes_back_with_a_message(client, auth, big, owner):
    auth.login(owner)
    empty = client.post(f"/orgs/{big.slug}/keys/revoke-selected", data={"back": "https://evil.example/"})
    assert empty.status_code == 302 and empty.headers["Location"] == f"/orgs/{big.slug}/keys/"
    assert "Tick the keys to revoke first" in client.get(f"/orgs/{big.slug}/keys/").get_data(as_text=True)
    too_many = client.post(
        f"/orgs/{big.slug}/keys/revoke-selected", data={"key": [str(uuid.uuid4()) for _ in range(101)]}
    )
    assert too_many.status_code == 302
    assert "at most 100 keys" in client.get(f"/orgs/{big.slug}/keys/").get_data(as_text=True)


def test_selection_of_only_unrevocable_keys_offers_no_confirm_button(client, auth, big, owner):
    gone = make(big, owner, "gone")
    key_services.revoke_key(big, gone, owner)
    auth.login(owner)
    body = select(client, big, [gone]).get_data(as_text=True)
    assert "Nothing to revoke" in body and "revoke-selected/confirm" not in body


def test_bulk_revoke_needs_a_csrf_token(csrf_app, owner):
    organization = factories.org(plan="enterprise")
    factories.member(organization, "owner", owner)
    api_key = make(organization, owner, "guarded")
    browser = csrf_app.test_client()
    login_page = browser.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', login_page).group(1)
    browser.post("/login", data={"email": owner.email, "password": factories.PASSWORD, "csrf_token": token})
    url = f"/orgs/{organization.slug}/keys/revoke-selected/confirm"
    assert browser.post(url, data={"key": str(api_key.id)}).status_code == 400
    db.session.refresh(api_key)
    assert api_key.revoked_at is None
