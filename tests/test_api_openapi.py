"""The published OpenAPI document is valid 3.1 and describes the answers the API really gives."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from portal.extensions import db
from portal.plans import PLANS
from tests.api_helpers import exhaust, verify


def _inline(node: Any, doc: dict[str, Any]) -> Any:
    """Replace local ``$ref``s with what they point at, so a response schema stands alone."""
    if isinstance(node, dict):
        if "$ref" in node and node["$ref"].startswith("#/"):
            target: Any = doc
            for part in node["$ref"][2:].split("/"):
                target = target[part]
            return _inline(target, doc)
        return {k: _inline(v, doc) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, doc) for v in node]
    return node


@pytest.fixture
def document(client) -> dict[str, Any]:
    return client.get("/v1/openapi.json").get_json()


def test_document_is_valid_openapi_3_1(document):
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema


def _check(document: dict[str, Any], response: Any, path: str = "/keys/verify", method: str = "post") -> None:
    answer = document["paths"][path][method]["responses"][str(response.status_code)]
    answer = _inline(answer, document)
    schema = answer["content"]["application/json"]["schema"]
    errors = sorted(Draft202012Validator(schema).iter_errors(response.get_json()), key=str)
    assert not errors, [e.message for e in errors]
    for header in answer.get("headers", {}):
        if answer["headers"][header].get("required"):
            assert header in response.headers, header


def test_real_answers_match_their_documented_schemas(client, document, org, api_key):
    _check(document, verify(client, api_key.plaintext))  # 200
    _check(document, verify(client, "pk_test_not_a_key"))  # 401 malformed
    _check(document, client.post("/v1/keys/verify", data="not json", content_type="application/json"))  # 400
    _check(document, verify(client, api_key.plaintext, scope="files:nope"))  # 400 invalid_scope
    _check(document, verify(client, api_key.plaintext, client_ip="nowhere"))  # 400 invalid_client_ip
    api_key.api_key.scopes = ["files:read"]
    api_key.api_key.meta = {"team": "x"}
    api_key.api_key.external_id = "ext-1"
    db.session.commit()
    _check(document, verify(client, api_key.plaintext, scope="files:read", client_ip="192.0.2.1"))  # 200, scoped
    _check(document, verify(client, api_key.plaintext, scope="files:write"))  # 403 insufficient_scope
    api_key.api_key.allowed_ips = ["10.0.0.0/8"]
    db.session.commit()
    _check(document, verify(client, api_key.plaintext, client_ip="192.0.2.1"))  # 403 ip_not_allowed
    api_key.api_key.allowed_ips = []
    db.session.commit()
    exhaust(org.id, PLANS[org.plan].requests_per_minute)
    _check(document, verify(client, api_key.plaintext))  # 429


def test_every_outcome_has_a_status_and_a_message_and_is_documented(client):
    from portal.verification.outcomes import (
        CODES,
        MESSAGES,
        OUTCOMES,
        REASONS,
        STATUS_BY_OUTCOME,
        TOO_MANY_INVALID_KEYS,
    )

    assert set(STATUS_BY_OUTCOME) == set(MESSAGES) == {*OUTCOMES, TOO_MANY_INVALID_KEYS}
    documented = client.get("/v1/openapi.json").get_json()["components"]["schemas"]["Invalid"]["properties"]["code"]
    assert set(documented["enum"]) == set(CODES)
    assert set(CODES) == (set(OUTCOMES) - {"ok", "forbidden"}) | set(REASONS) | {TOO_MANY_INVALID_KEYS}


@pytest.mark.parametrize(
    ("endpoint", "accepted"),
    [("/a b\\N;'\"`~", True), ("x" * 200, True), ("/café", False), ("/a\tb", False), ("", False), ("x" * 201, False)],
)
def test_documented_endpoint_rule_is_the_enforced_one(client, document, api_key, endpoint, accepted):
    schema = _inline(document["components"]["schemas"]["VerifyRequest"], document)
    assert Draft202012Validator(schema).is_valid({"key": "k", "endpoint": endpoint}) is accepted
    assert (verify(client, api_key.plaintext, endpoint=endpoint).status_code != 400) is accepted


def test_real_gateway_answers_match_their_documented_schemas(client, document, org, api_key):
    from portal.keys import format as keyformat

    def gateway(key: str | None, query: str = "", **headers: str) -> Any:
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return client.get(f"/v1/keys/verify/gateway{query}", headers={"X-Forwarded-Uri": "/x", **headers})

    for response in (
        gateway(api_key.plaintext),  # 200 with the identity headers
        gateway(None),  # 401 missing_key
        gateway(api_key.plaintext, **{"X-API-Key": "pk_test_other"}),  # 401 conflicting_keys
        gateway(keyformat.generate("test")),  # 401 unknown
        gateway(api_key.plaintext, "?scope=files:nope"),  # 400
    ):
        _check(document, response, "/keys/verify/gateway", "get")
    api_key.api_key.scopes = ["files:read"]
    db.session.commit()
    _check(document, gateway(api_key.plaintext, "?scope=files:write"), "/keys/verify/gateway", "get")  # 403
    exhaust(org.id, PLANS[org.plan].requests_per_minute)
    _check(document, gateway(api_key.plaintext), "/keys/verify/gateway", "get")  # 429
    operations = document["paths"]["/keys/verify/gateway"]
    assert set(operations) == {"get", "head", "post"}
    assert set(operations["get"]["responses"]["200"]["headers"]) >= {"X-ProCode-Organization", "X-ProCode-Key-Id"}


def test_every_answer_of_every_route_has_an_example_that_fits_its_schema_and_is_on_the_docs_page(client, document):
    responses = document["paths"]["/keys/verify"]["post"]["responses"]
    assert set(responses) == {"200", "400", "401", "403", "429", "503"}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                media = _inline(answer, document).get("content", {}).get("application/json")
                if media is None:
                    continue
                assert "example" in media, (path, method, status)
                errors = list(Draft202012Validator(media["schema"]).iter_errors(media["example"]))
                assert not errors, (path, method, status, [e.message for e in errors])
    page = client.get("/docs/api").get_data(as_text=True)
    assert page.count('<details class="example">') >= len(responses)
    assert "insufficient_scope" in page and "cus_1042" in page


def _payload_schema(document: dict[str, Any], event_type: str) -> Draft202012Validator:
    media = document["webhooks"][event_type]["post"]["requestBody"]["content"]["application/json"]
    return Draft202012Validator(_inline(media["schema"], document), format_checker=Draft202012Validator.FORMAT_CHECKER)


def test_every_event_is_a_webhook_with_signature_headers_and_an_example_that_fits(client, document):
    from portal.notify.catalogue import EVENTS, PAYLOAD_VERSION, TEST_EVENT

    assert set(document["webhooks"]) == {*EVENTS, TEST_EVENT}
    for name, item in document["webhooks"].items():
        operation = item["post"]
        headers = [_inline(p, document) for p in operation["parameters"]]
        assert [(h["name"], h["in"], h["required"]) for h in headers] == [
            ("webhook-id", "header", True),
            ("webhook-timestamp", "header", True),
            ("webhook-signature", "header", True),
        ]
        assert list(operation["responses"]) == ["2XX"], name
        example = operation["requestBody"]["content"]["application/json"]["example"]
        assert (example["type"], example["version"]) == (name, PAYLOAD_VERSION)
        validator = _payload_schema(document, name)
        errors = list(validator.iter_errors(example))
        assert not errors, (name, [e.message for e in errors])
        assert not validator.is_valid({**example, "type": "key.other"})  # each entry is its own event's body
        assert not validator.is_valid({k: v for k, v in example.items() if k != "data"})
    page = client.get("/docs/api").get_data(as_text=True)
    assert all(f'id="webhook-{name}"' in page for name in document["webhooks"])


def test_the_events_the_portal_sends_fit_their_documented_webhook_schemas(document, org, owner):
    from datetime import timedelta

    from portal.keys import leaks
    from portal.keys import services as key_services
    from portal.models import NotificationEvent
    from portal.orgs import invitations
    from portal.orgs import services as org_services
    from portal.timeutil import utcnow
    from tests import factories

    issued = factories.api_key(org, owner, name="Checkout", expires_at=utcnow() + timedelta(days=30))
    key_services.roll_key(org, issued.api_key, timedelta(hours=1), owner)
    key_services.revoke_key(org, factories.api_key(org, owner).api_key, owner)
    reported = factories.api_key(org, owner, name="Pasted in a gist").api_key
    for revoke in (False, True):
        leaks.handle_leak(reported, revoke=revoke, source=leaks.SOURCE_SECRET_SCANNING, url=None, ip=None, now=utcnow())
        db.session.commit()
    owner_membership = org_services.membership_of(org.id, owner)
    invite = invitations.create_invitation(
        org, role="viewer", email=None, ttl=timedelta(days=1), actor=owner, actor_membership=owner_membership
    )
    newcomer = factories.user()
    membership = invitations.accept_invitation(invite.token, newcomer)
    org_services.remove_member(org, membership, actor=owner, actor_membership=owner_membership)

    sent = db.session.scalars(db.select(NotificationEvent).filter_by(organization_id=org.id)).all()
    assert {e.type for e in sent} == {
        "key.created",
        "key.rolled",
        "key.revoked",
        "key.leak_reported",
        "member.joined",
        "member.removed",
    }
    for event in sent:
        errors = list(_payload_schema(document, event.type).iter_errors(event.payload))
        assert not errors, (event.type, [e.message for e in errors])
