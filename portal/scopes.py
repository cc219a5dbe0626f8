"""The ProCode API permissions a key can be restricted to: defined once here, read by the key forms, the
verification request parser, the CLI, the OpenAPI document and the key pages.

A key with no scopes (NULL) has full access; a restricted key may call only the permissions it lists.
"""

from __future__ import annotations

RESOURCES: tuple[tuple[str, str], ...] = (
    ("translate", "Translate"),
    ("complete", "Complete"),
    ("embed", "Embed"),
    ("classify", "Classify"),
    ("search", "Search"),
    ("moderate", "Moderate"),
    ("files", "Files"),
)
ACCESS: tuple[tuple[str, str], ...] = (("read", "read"), ("write", "write"))

SCOPES: tuple[str, ...] = tuple(f"{resource}:{access}" for resource, _ in RESOURCES for access, _ in ACCESS)
SCOPE_SET: frozenset[str] = frozenset(SCOPES)
LABELS: dict[str, str] = {
    f"{resource}:{access}": f"{label} ({access_label})"
    for resource, label in RESOURCES
    for access, access_label in ACCESS
}


def is_scope(value: object) -> bool:
    return isinstance(value, str) and value in SCOPE_SET


def normalize(scopes: list[str] | tuple[str, ...] | None) -> list[str] | None:
    """Catalogue order without duplicates; ``None`` (full access) for no scopes. Unknown names: ValueError."""
    if not scopes:
        return None
    unknown = sorted(set(scopes) - SCOPE_SET)
    if unknown:
        raise ValueError(f"unknown scope(s): {', '.join(unknown)}")
    chosen = set(scopes)
    return [scope for scope in SCOPES if scope in chosen]
