"""What makes a password acceptable: one rule for sign-up, change, reset and ``flask users create``.

Length 10–128 (the forms say so first), then zxcvbn's estimate with the account's own email and name as known
words: a score below 3 is refused with zxcvbn's own reason, and so is a password containing the address's
local part (``ada`` in ``ada@example.com``), which is the first thing anyone guessing tries.
"""

from __future__ import annotations

MIN_LENGTH = 10
MAX_LENGTH = 128
MIN_SCORE = 3
# zxcvbn's matching grows with the input; everything past this is extra strength it need not see.
_ESTIMATE_CHARS = 100


def problem(password: str, *, email: str = "", name: str = "") -> str | None:
    """Why ``password`` is refused, as a sentence for the form, or None when it is good enough."""
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        return f"Use {MIN_LENGTH} to {MAX_LENGTH} characters."
    local = email.split("@")[0].strip().lower()
    if len(local) >= 3 and local in password.lower():
        return "Do not use your email address in your password."
    from zxcvbn import zxcvbn  # its word lists are ~13 MB: loaded by the first password check, not by every worker

    inputs = [part for part in (email, local, name, *name.split()) if part]
    result = zxcvbn(password[:_ESTIMATE_CHARS], user_inputs=inputs)
    if result["score"] >= MIN_SCORE:
        return None
    feedback = result.get("feedback") or {}
    reason = feedback.get("warning") or "This password is too easy to guess."
    suggestions = " ".join(feedback.get("suggestions") or [])
    return f"{reason} {suggestions}".strip() if suggestions else reason
