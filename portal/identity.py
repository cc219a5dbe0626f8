"""Names and addresses people see: one normal form, and no look-alikes.

Plain functions, no Flask. An address is NFC-normalised and lower-cased. A name or address is refused when it
holds control or format characters (Unicode categories Cc and Cf: bidi overrides that reverse how text reads,
zero-width characters that make two names differ invisibly), and a word is refused when it mixes letters of
more than one of the scripts Latin, Cyrillic and Greek (``pаypal`` with a Cyrillic ``а``), which is how
look-alike identities are usually built. Words in different scripts side by side (``Ivan Иванов``) are fine.
"""

from __future__ import annotations

import re
import unicodedata

_CONFUSABLE_SCRIPTS = ("LATIN", "CYRILLIC", "GREEK")
_WORD = re.compile(r"[^\W\d_]+")  # runs of letters


def normalize_email(email: str) -> str:
    return unicodedata.normalize("NFC", email.strip()).lower()


def normalize_name(name: str) -> str:
    return unicodedata.normalize("NFC", name.strip())


def _script(char: str) -> str | None:
    name = unicodedata.name(char, "")
    return next((script for script in _CONFUSABLE_SCRIPTS if name.startswith(script + " ")), None)


def invisible_characters(text: str) -> bool:
    return any(unicodedata.category(c) in ("Cc", "Cf") for c in text)


def mixed_script_word(text: str) -> str | None:
    """The first word whose letters come from more than one of Latin, Cyrillic and Greek, else None."""
    for word in _WORD.findall(unicodedata.normalize("NFC", text)):
        scripts = {s for s in map(_script, word) if s is not None}
        if len(scripts) > 1:
            return word
    return None


def problem(text: str) -> str | None:
    """Why ``text`` cannot be a name or address people rely on, or None."""
    if invisible_characters(text):
        return "Invisible or control characters (such as text-direction marks) are not allowed."
    word = mixed_script_word(text)
    if word is not None:
        return f"“{word}” mixes letters from different alphabets (for example Latin and Cyrillic)."
    return None
