"""Keys that carry policy: scopes, IP allowlists, metadata and external ids, per-key limits and the Free plan's
monthly quota, set on the key pages and enforced by the verification (through the test client, on the
production statements)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.keys import services as key_services
from portal.keys.policy import KeyPolicy
from portal.models import ApiKey, AuditEvent
from portal.plans import PLANS
from portal.verification.outcomes import RateLimit, Verification
from tests import factories
from tests.api_helpers import away_from_a_window_boundary, usage_rows, verify


def _create(client, org, **data):
    form = {"name": "Worker", "environment": "test", "request_token": "tok-" + data.pop("token", "1")}
    form.update(data)
    return client.post(f"/orgs/{org.slug}/keys/new", data=form)


def _only_key(org) -> ApiKey:
    return db.session.scalar(sa.select(ApiKey).where(ApiKey.organization_id == org.id))


def _policy(api_key, **policy):
    api_key.api_key.scopes = policy.get("scopes")
    api_key.api_key.allowed_ips = policy.get("allowed_ips", [])
    api_key.api_key.rate_limit = policy.get("rate_limit")
    db.session.commit()


# -- the pages --------------------------------------------------------------------------------------------


def test_create_page_stores_the_policy_and_audits_it(client, auth, org, member):
    auth.login(member)
    response = _create(
        client,
        org,
        scopes=["files:write", "translate:read"],
        allowed_ips="203.0.113.0/24\n2001:db8::/32, 198.51.100.7",
        rate_limit="10",
        external_id="cust-42",
        meta_json='{"team": "billing", "tier": 2}',
    )
    assert response.status_code == 200
    row = _only_key(org)
    assert row.scopes == ["translate:read", "files:write"]  # catalogue order
    assert row.allowed_ips == ["203.0.113.0/24", "2001:db8::/32", "198.51.100.7/32"]
    assert (row.rate_limit, row.external_id, row.meta) == (10, "cust-42", {"team": "billing", "tier": 2})
    event = db.session.scalar(sa.select(AuditEvent).where(AuditEvent.action == "key.created"))
    assert event.details["scopes"] == "translate:read files:write"
    page = client.get(f"/orgs/{org.slug}/keys/{row.id}").get_data(as_text=True)
    assert "cust-42" in page and "files:write" in page and "203.0.113.0/24" in page and "billing" in page


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("scopes", "files:delete", "is not a valid choice"),
        ("allowed_ips", "10.0.0.1/8", "is not an IPv4 or IPv6 address or network"),
        ("allowed_ips", "not-an-ip", "is not an IPv4 or IPv6 address or network"),
        ("allowed_ips", "fe80::%eth0/64", "names a network interface"),
        ("allowed_ips", "\n".join(f"10.0.{i}.0/24" for i in range(51)), "At most 50"),
        ("rate_limit", "0", "between 1 and the plan"),
        ("rate_limit", str(PLANS["free"].requests_per_minute + 1), "between 1 and the plan"),
        ("rate_limit", "many", "Not a valid integer value"),
        ("meta_json", "[1, 2]", "must be a JSON object"),
        ("meta_json", "{not json", "must be valid JSON"),
        ("meta_json", json.dumps({"x": "y" * 4100}), "at most 4096 bytes"),
        ("external_id", "x" * 129, "at most 128 printable characters"),
        ("external_id", "tab\there", "at most 128 printable characters"),
    ],
)
def test_create_page_refuses_bad_policy_with_a_form_error(client, auth, org, member, field, value, message):
    auth.login(member)
    response = _create(client, org, **{field: value})
    assert response.status_code == 422
    assert message in response.get_data(as_text=True)
    assert _only_key(org) is None


def test_external_id_is_unique_per_organization(client, auth, org, member):
    factories.api_key(org, member, name="First", key_policy=_kp(external_id="cust-1"))
    other = factories.org()
    factories.api_key(other, None, name="Elsewhere", key_policy=_kp(external_id="cust-2"))
    auth.login(member)
    response = _create(client, org, external_id="cust-1")
    assert response.status_code == 422
    assert "already has the external id" in response.get_data(as_text=True)
    assert _create(client, org, external_id="cust-2", token="2").status_code == 200  # another org's id is fine


def _kp(**kwargs):
    return KeyPolicy(**kwargs)


def test_policy_change_on_the_key_page_is_audited_and_applies_to_the_next_call(client, auth, org, member):
    issued = factories.api_key(org, member)
    assert verify(client, issued.plaintext, scope="files:write").status_code == 200  # full access
    auth.login(member)
    url = f"/orgs/{org.slug}/keys/{issued.api_key.id}/policy"
    response = client.post(url, data={"scopes": ["files:read"], "allowed_ips": "", "rate_limit": ""})
    assert response.status_code == 302
    event = db.session.scalar(sa.select(AuditEvent).where(AuditEvent.action == "key.policy_changed"))
    assert event.details == {"hint": issued.api_key.hint, "scopes": "files:read"}
    assert verify(client, issued.plaintext, scope="files:write").status_code == 403
    assert verify(client, issued.plaintext, scope="files:read").status_code == 200
    # Back to full access.
    client.post(url, data={"allowed_ips": "", "rate_limit": ""})
    assert verify(client, issued.plaintext, scope="files:write").status_code == 200


def test_policy_form_errors_show_on_the_key_page(client, auth, org, member):
    issued = factories.api_key(org, member)
    auth.login(member)
    url = f"/orgs/{org.slug}/keys/{issued.api_key.id}/policy"
    response = client.post(url, data={"allowed_ips": "300.1.1.1", "rate_limit": "-3"})
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert "is not an IPv4 or IPv6 address" in body and "between 1 and the plan" in body
    assert db.session.scalar(sa.select(AuditEvent).where(AuditEvent.action == "key.policy_changed")) is None


def test_metadata_and_external_id_on_the_key_page(client, auth, org, member):
    issued = factories.api_key(org, member)
    factories.api_key(org, member, name="Other", key_policy=_kp(external_id="taken"))
    auth.login(member)
    url = f"/orgs/{org.slug}/keys/{issued.api_key.id}/details"
    bad = client.post(url, data={"meta_json": '"just a string"', "external_id": "ok"})
    assert bad.status_code == 422 and "must be a JSON object" in bad.get_data(as_text=True)
    taken = client.post(url, data={"meta_json": "{}", "external_id": "taken"})
    assert taken.status_code == 422 and "already has the external id" in taken.get_data(as_text=True)
    good = client.post(url, data={"meta_json": '{"plan": "gold", "n": [1, 2]}', "external_id": "acct-9"})
    assert good.status_code == 302
    assert db.session.scalar(sa.select(AuditEvent).where(AuditEvent.action == "key.details_changed"))
    body = verify(client, issued.plaintext).get_json()
    assert body["meta"] == {"plan": "gold", "n": [1, 2]} and body["external_id"] == "acct-9"


def test_key_list_search_by_name_hint_or_external_id(client, auth, org, member):
    billing = factories.api_key(org, member, name="Billing worker", key_policy=_kp(external_id="ACME-7"))
    factories.api_key(org, member, name="Search indexer")
    auth.login(member)

    def names(q: str) -> list[str]:
        body = client.get(f"/orgs/{org.slug}/keys/", query_string={"q": q}).get_data(as_text=True)
        return [n for n in ("Billing worker", "Search indexer") if n in body]

    assert names("billing") == ["Billing worker"]
    assert names("acme-") == ["Billing worker"]
    assert names(billing.api_key.hint[-4:]) == ["Billing worker"]
    assert names("%") == []  # LIKE wildcards are literal
    assert "No keys match" in client.get(f"/orgs/{org.slug}/keys/?q=nothing").get_data(as_text=True)


# -- the verification ---------------------------------------------------------------------------------------


def test_valid_answer_lists_scopes_meta_and_external_id(client, org, owner):
    full = factories.api_key(org, owner, name="full")
    restricted = factories.api_key(
        org, owner, name="r", key_policy=_kp(scopes=["search:read"], meta={"a": 1}, external_id="e-1")
    )
    body = verify(client, full.plaintext).get_json()
    assert (body["scopes"], body["meta"], body["external_id"]) == (None, {}, None)
    body = verify(client, restricted.plaintext).get_json()
    assert (body["scopes"], body["meta"], body["external_id"]) == (["search:read"], {"a": 1}, "e-1")


@pytest.mark.parametrize(
    "meta",
    [
        {"name": 'Zoë "quoted" \\ back\tslash', "n": [1, 2.5, None, True, -0.001], "nested": {"k": "ü€😀"}},
        {"big": 12345678901234567890, "small": 1e-7, "empty": {}, "list": []},
        {"long": "y" * 600},
    ],
)
def test_valid_answer_is_compact_ascii_json_in_the_documented_order(client, org, owner, meta):
    issued = factories.api_key(
        org, owner, name="m", key_policy=_kp(scopes=["search:read", "files:read"], meta=meta, external_id="ëxt-1")
    )
    for _ in range(2):  # the second answer too: a key's metadata is remembered between calls
        raw = verify(client, issued.plaintext).get_data()
        body = json.loads(raw)
        assert raw == json.dumps(body, separators=(",", ":")).encode()  # compact, non-ASCII escaped
        assert list(body) == [
            "valid", "key_id", "organization", "environment", "scopes", "meta", "external_id", "ratelimit"
        ]  # fmt: skip
        assert (body["scopes"], body["meta"], body["external_id"]) == (["search:read", "files:read"], meta, "ëxt-1")


@pytest.mark.parametrize(
    "answer",
    [
        Verification("ok", "k", "o", "acme", "pro", "live", RateLimit(1000, 999, 60)),
        Verification("ok", "k", "o", 'ac"me', "pro", "live", None, scopes=["a:b"], meta_json='{"x":"\\u00e9"}'),
        Verification("ok", "k", "o", "acme", "pro", "live", RateLimit(1, 0, 1), external_id='é "x" \\'),
        Verification("forbidden", "k", "o", "acme", "pro", "live", RateLimit(5, 4, 3), reason="ip_not_allowed"),
        Verification("unknown"),
    ],
)
def test_an_answer_body_is_its_documented_shape_as_compact_json(answer):
    assert answer.answer_json() == json.dumps(answer.as_json(), separators=(",", ":"))


def test_missing_scope_is_403_insufficient_scope_and_metered_forbidden(client, org, api_key):
    _policy(api_key, scopes=["files:read"])
    response = verify(client, api_key.plaintext, scope="files:write", endpoint="/files")
    assert response.status_code == 403
    assert response.get_json()["code"] == "insufficient_scope"
    assert response.headers["WWW-Authenticate"] == 'Bearer error="insufficient_scope", scope="files:write"'
    row = usage_rows(endpoint="/files")[-1]
    assert (row.outcome, row.status_code, row.key_id) == ("forbidden", 403, api_key.api_key.id)
    # The refused call did not spend the organization's budget.
    ok = verify(client, api_key.plaintext, scope="files:read")
    assert ok.status_code == 200
    assert ok.headers["RateLimit-Remaining"] == str(PLANS["free"].requests_per_minute - 1)


@pytest.mark.parametrize("scope", ["files:delete", "FILES:WRITE", 7, ["files:read"], ""])
def test_unknown_scope_is_400_and_not_metered(client, api_key, scope):
    before = len(usage_rows())
    response = verify(client, api_key.plaintext, scope=scope)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_scope"
    assert len(usage_rows()) == before


def test_ip_allowlist(client, org, api_key):
    _policy(api_key, allowed_ips=["203.0.113.0/24", "2001:db8::/32"])
    assert verify(client, api_key.plaintext, client_ip="203.0.113.9").status_code == 200
    assert verify(client, api_key.plaintext, client_ip="2001:db8::1").status_code == 200
    assert verify(client, api_key.plaintext, client_ip="::ffff:203.0.113.9").status_code == 200  # IPv4-mapped
    outside = verify(client, api_key.plaintext, client_ip="198.51.100.1", endpoint="/ip")
    assert outside.status_code == 403 and outside.get_json()["code"] == "ip_not_allowed"
    missing = verify(client, api_key.plaintext, endpoint="/ip")  # no client_ip: refused for a key with a list
    assert missing.status_code == 403 and missing.get_json()["code"] == "ip_not_allowed"
    assert [r.outcome for r in usage_rows(endpoint="/ip")] == ["forbidden", "forbidden"]
    _policy(api_key, allowed_ips=[])
    assert verify(client, api_key.plaintext).status_code == 200  # empty list: any address, none needed


def test_a_link_local_client_ip_with_its_zone_is_matched_without_it(client, api_key):
    _policy(api_key, allowed_ips=["fe80::/10"])
    assert verify(client, api_key.plaintext, client_ip="fe80::1%eth0", endpoint="/zone").status_code == 200
    assert verify(client, api_key.plaintext, client_ip="fe80::1%25", endpoint="/zone").status_code == 200
    assert [(r.outcome, r.client_ip) for r in usage_rows(endpoint="/zone")] == [("ok", "fe80::1"), ("ok", "fe80::1")]


@pytest.mark.parametrize("client_ip", ["10.0.0.300", "example.com", 12, "1.2.3.4/8", "x" * 100])
def test_bad_client_ip_is_400(client, api_key, client_ip):
    response = verify(client, api_key.plaintext, client_ip=client_ip)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_client_ip"


def test_revoked_beats_policy(client, org, api_key):
    _policy(api_key, scopes=["files:read"], allowed_ips=["10.0.0.0/8"])
    api_key.api_key.revoked_at = sa.func.now() - sa.text("interval '1 minute'")
    db.session.commit()
    assert verify(client, api_key.plaintext, scope="files:write").get_json()["code"] == "revoked"


def test_per_key_limit_refuses_without_spending_the_organization(client, org, owner):
    away_from_a_window_boundary()
    limited = factories.api_key(org, owner, name="limited", key_policy=_kp(rate_limit=2))
    other = factories.api_key(org, owner, name="other")
    answers = [verify(client, limited.plaintext, endpoint="/lim") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 429, 429]
    assert answers[0].headers["RateLimit-Limit"] == "2"
    assert [a.headers["RateLimit-Remaining"] for a in answers] == ["1", "0", "0", "0"]
    assert answers[2].get_json()["code"] == "rate_limited"
    # The organization spent only the two admitted calls.
    other_answer = verify(client, other.plaintext)
    assert other_answer.status_code == 200
    assert other_answer.headers["RateLimit-Remaining"] == str(PLANS["free"].requests_per_minute - 3)


def test_organization_limit_binds_a_key_with_a_higher_limit(client, org, owner):
    from tests.api_helpers import exhaust

    limited = factories.api_key(org, owner, name="limited", key_policy=_kp(rate_limit=50))
    exhaust(org.id, PLANS["free"].requests_per_minute)
    response = verify(client, limited.plaintext)
    assert response.status_code == 429 and response.get_json()["code"] == "rate_limited"
    key_rows = db.session.scalar(
        sa.text("SELECT count(*) FROM rate_limit_tracking WHERE bucket = :b"), {"b": f"key:{limited.api_key.id}"}
    )
    assert key_rows == 0  # refused by the organization: the key's budget untouched


def _quota_used(org_id, count: int) -> None:
    db.session.execute(
        sa.text(
            "INSERT INTO rate_limit_tracking (bucket, window_start, organization_id, count) VALUES "
            "(:b, date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', :org, :n)"
        ),
        {"b": f"quota:{org_id}", "org": org_id, "n": count},
    )
    db.session.commit()


def test_free_plan_stops_at_the_monthly_quota(client, org, api_key):
    quota = PLANS["free"].monthly_quota
    _quota_used(org.id, quota - 1)
    assert verify(client, api_key.plaintext).status_code == 200
    refused = verify(client, api_key.plaintext, endpoint="/quota")
    assert refused.status_code == 429
    assert refused.get_json()["code"] == "quota_exceeded"
    retry = int(refused.headers["Retry-After"])
    assert 0 < retry <= 31 * 86400
    assert usage_rows(endpoint="/quota")[-1].outcome == "quota_exceeded"
    count = db.session.scalar(
        sa.text("SELECT count FROM rate_limit_tracking WHERE bucket = :b"), {"b": f"quota:{org.id}"}
    )
    assert count == quota  # the refused call spent nothing


def test_paid_plans_go_on_past_the_quota(client, api_key):
    pro = factories.org(plan="pro")
    key = factories.api_key(pro, None)
    _quota_used(pro.id, PLANS["pro"].monthly_quota + 5)
    assert verify(client, key.plaintext).status_code == 200


def test_staff_quota_extension_raises_this_months_free_quota(client, auth, org, api_key, staff):
    _quota_used(org.id, PLANS["free"].monthly_quota)
    assert verify(client, api_key.plaintext).get_json()["code"] == "quota_exceeded"
    auth.login(staff)
    bad = client.post(f"/staff/orgs/{org.slug}/quota", data={"calls": "lots", "reason": "launch week"})
    assert bad.status_code == 422 and "Not a valid integer value" in bad.get_data(as_text=True)
    assert client.post(f"/staff/orgs/{org.slug}/quota", data={"calls": "0", "reason": "x"}).status_code == 422
    response = client.post(f"/staff/orgs/{org.slug}/quota", data={"calls": "2", "reason": "launch week"})
    assert response.status_code == 302
    event = db.session.scalar(sa.select(AuditEvent).where(AuditEvent.action == "org.quota_extended"))
    assert event.details["calls"] == 2 and event.details["reason"] == "launch week"
    assert [verify(client, api_key.plaintext).status_code for _ in range(3)] == [200, 200, 429]
    page = client.get(f"/staff/orgs/{org.slug}").get_data(as_text=True)
    assert "10,002 calls" in page


def test_members_cannot_extend_quota(client, auth, org, owner):
    auth.login(owner)
    response = client.post(f"/staff/orgs/{org.slug}/quota", data={"calls": "100", "reason": "please"})
    assert response.status_code in (403, 404)
    db.session.refresh(org)
    assert org.quota_extension == 0


# -- @require_api_key -----------------------------------------------------------------------------------------


def test_require_api_key_with_a_scope(client, org, api_key):
    headers = {"Authorization": f"Bearer {api_key.plaintext}"}
    assert client.post("/v1/files", headers=headers).status_code == 200  # full access
    _policy(api_key, scopes=["files:read"])
    refused = client.post("/v1/files", headers=headers)
    assert refused.status_code == 403
    assert refused.get_json()["error"]["code"] == "insufficient_scope"
    assert refused.headers["WWW-Authenticate"] == 'Bearer error="insufficient_scope", scope="files:write"'
    assert client.get("/v1/whoami", headers=headers).status_code == 200  # no scope needed
    assert usage_rows(endpoint="/v1/files")[-1].outcome == "forbidden"


def test_require_api_key_checks_the_client_address(client, org, api_key):
    headers = {"Authorization": f"Bearer {api_key.plaintext}"}
    _policy(api_key, allowed_ips=["10.0.0.0/8"])
    refused = client.get("/v1/whoami", headers=headers)  # the test client is 127.0.0.1
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "ip_not_allowed"
    _policy(api_key, allowed_ips=["127.0.0.0/8"])
    assert client.get("/v1/whoami", headers=headers).status_code == 200


def test_require_api_key_refuses_an_unknown_scope_at_definition():
    from portal.api.decorators import require_api_key

    with pytest.raises(ValueError, match="unknown scope"):
        require_api_key(scope="files:delete")


def test_a_rolled_key_keeps_its_policy_and_its_external_id_moves_to_the_new_key(client, org, owner):
    old = factories.api_key(
        org,
        owner,
        key_policy=KeyPolicy(
            scopes=["files:read"],
            allowed_ips=["203.0.113.0/24"],
            rate_limit=5,
            meta={"team": "billing"},
            external_id="billing-worker",
        ),
    )
    new = key_services.roll_key(org, old.api_key, timedelta(hours=1), owner)
    rolled = new.api_key
    assert rolled.scopes == ["files:read"]
    assert rolled.allowed_ips == ["203.0.113.0/24"]
    assert (rolled.rate_limit, rolled.meta, rolled.external_id) == (5, {"team": "billing"}, "billing-worker")
    assert old.api_key.external_id is None
    # Enforced on the new key as on the old: a scope it lacks and an address outside its list are refused.
    ok = verify(client, new.plaintext, scope="files:read", client_ip="203.0.113.9")
    assert ok.status_code == 200 and ok.get_json()["external_id"] == "billing-worker"
    assert verify(client, new.plaintext, scope="files:write", client_ip="203.0.113.9").status_code == 403
    assert verify(client, new.plaintext, scope="files:read", client_ip="198.51.100.1").status_code == 403
