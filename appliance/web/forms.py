"""Form bodies as the UI's pages send them (application/x-www-form-urlencoded, htmx's default too).

Parsed here with the standard library rather than a multipart parser: the UI uploads no files, and the
API's BodyLimit already caps the size before this reads anything.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import Request

from appliance.errors import UsageError

MAX_FIELDS = 50


async def form_fields(request: Request) -> dict[str, str]:
    """The last value of each field; a body of another type, or with too many fields, is a 400."""
    return dict(await form_pairs(request))


async def form_pairs(request: Request, max_fields: int = MAX_FIELDS) -> list[tuple[str, str]]:
    """Every (field, value) in order: a field may repeat (checkboxes)."""
    body = await request.body()
    if not body:
        return []
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise UsageError(f"a form must be sent as application/x-www-form-urlencoded, not {kind[:60] or 'nothing'}")
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=max_fields)
    except (UnicodeDecodeError, ValueError):
        raise UsageError(f"the form is not valid UTF-8 form data of at most {max_fields} fields") from None
