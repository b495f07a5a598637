"""Node and cluster names: checked before they are used in an MQTT topic or a store tag.

MQTT reserves ``/``, ``+`` and ``#`` and topics starting with ``$``; our own topic tree
reserves segments starting with ``_`` (``_alerts``, ``_fleet``). A name is therefore
letters, digits, ``.``, ``-`` and ``_``, starting with a letter or digit, at most 64
characters: every host name fits, and nothing can escape its topic.
"""

from __future__ import annotations

import re

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z"  # \Z: "$" would let a final \n in
_NAME = re.compile(NAME_PATTERN)
_RULE = "letters, digits, '.', '-' and '_', starting with a letter or digit, at most 64 characters"


def name_problem(value: str) -> str | None:
    """Return why ``value`` is not a valid node or cluster name, or None if it is."""
    if _NAME.fullmatch(value):
        return None
    if not value:
        return f"is empty; expected {_RULE}"
    for ch in value:
        if ch in "/+#":
            return f"contains {ch!r}, which MQTT reserves in topics; expected {_RULE}"
        if ord(ch) < 32 or ord(ch) == 127:
            return f"contains a control character; expected {_RULE}"
    if value[0] in "_$":
        return f"starts with {value[0]!r}, reserved for system topics; expected {_RULE}"
    if len(value) > 64:
        return f"is {len(value)} characters long; expected {_RULE}"
    return f"{value!r} is not a valid name; expected {_RULE}"


def sanitize_hostname(hostname: str) -> str:
    """Derive a valid default node name from a host name (its first label, cleaned)."""
    short = hostname.split(".", 1)[0]
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", short).lstrip("._-")[:64]
    return cleaned or "node"


def default_node() -> str:
    """The node name used when none is configured: this host's first label."""
    import socket

    return sanitize_hostname(socket.gethostname())
