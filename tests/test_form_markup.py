"""Form markup a screen reader depends on: help and errors linked to their field, one autofocus a page."""

from __future__ import annotations

import re


def _input(html: str, name: str) -> str:
    match = re.search(rf'<input[^>]*name="{name}"[^>]*>', html)
    assert match, name
    return match.group(0)


def test_password_rules_are_shown_and_linked_before_the_first_submit(client):
    html = client.get("/signup").get_data(as_text=True)
    password = _input(html, "password")
    assert 'aria-describedby="password-help"' in password
    assert re.search(r'id="password-help"[^>]*>10 to 128 characters', html)
    assert "None" not in html
    assert html.count("autofocus") == 1 and "autofocus" in _input(html, "display_name")


def test_errors_are_linked_to_their_field_and_take_the_focus(client):
    response = client.post("/signup", data={"display_name": "Ada", "email": "not-an-email", "password": "short"})
    html = response.get_data(as_text=True)
    email, password = _input(html, "email"), _input(html, "password")
    assert 'aria-invalid="true"' in email and 'aria-describedby="email-error-1"' in email
    assert re.search(r'id="email-error-1"[^>]*>\s*\S', html)
    assert 'aria-describedby="password-help password-error-1"' in password
    assert 'id="password-error-1"' in html
    assert "aria-describedby" not in _input(html, "display_name")  # no help, no error: nothing to point at
    assert "None" not in html
    assert html.count("autofocus") == 1 and "autofocus" in email  # the first field with an error


def test_a_page_with_several_forms_focuses_none_of_them(client, auth, org, owner, api_key):
    auth.login(owner)
    html = client.get(f"/orgs/{org.slug}/keys/{api_key.api_key.id}").get_data(as_text=True)
    assert "autofocus" not in html
