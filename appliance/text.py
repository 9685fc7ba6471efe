"""Untrusted text made safe to log or print: control characters escaped, length bounded."""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
DEFAULT_LIMIT = 80


def shown(value: object, limit: int = DEFAULT_LIMIT) -> str:
    """`value` as one printable line of at most `limit` characters (plus an ellipsis and the full length)."""
    text = str(value)
    cut = len(text) > limit
    text = _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text[:limit])
    return f"{text}…({len(str(value))} chars)" if cut else text


# The largest row id every database drover runs on holds: ids are INTEGER, 32 bits on PostgreSQL.
MAX_ID = 2**31 - 1


def as_id(key: str) -> int | None:
    """`key` as a row id when it is one: ASCII digits (not "²" or "٣", which str.isdigit() also takes) that fit
    the id column. Anything else is None, so a lookup falls back to names instead of overflowing in the database."""
    if not (key.isascii() and key.isdigit()) or len(key) > 19:
        return None
    value = int(key)
    return value if value <= MAX_ID else None


def whole(text: str, top: int = MAX_ID) -> int | None:
    """`text` as a whole number from 0 to `top` when it is one in ASCII digits; else None (a form field or query
    value the caller refuses with its own words, never an int() that raises on "²" or overflows a column)."""
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(top)):
        return None
    value = int(text)
    return value if value <= top else None
