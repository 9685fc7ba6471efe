"""Paging of long lists over the API (`GET /api/v1/vms`, `/hosts`): `?limit=N&offset=M` over a stable order,
with the total count in the answer so a client knows when it has read everything.

No limit is "all of them" (what callers got before paging existed); the CLI reads page after page.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from appliance.errors import UsageError

MAX_LIMIT = 10_000
T = TypeVar("T", bound=tuple[Any, ...])


@dataclass(frozen=True)
class Page:
    limit: int | None  # None: every row from offset on
    offset: int = 0

    @classmethod
    def from_query(cls, params: Mapping[str, str], allowed: frozenset[str] = frozenset()) -> Page:
        """`limit` (1..MAX_LIMIT) and `offset` (0 or more) from a query string; UsageError naming a bad one or
        any parameter that is neither these nor in `allowed`."""
        unknown = sorted(set(params) - {"limit", "offset"} - allowed)
        if unknown:
            raise UsageError(f"{unknown[0]}: unknown query parameter", "limit, offset")
        limit = params.get("limit")
        if limit is not None and (not limit.isdigit() or not 1 <= int(limit) <= MAX_LIMIT):
            raise UsageError(f"limit: must be an integer from 1 to {MAX_LIMIT}")
        offset = params.get("offset", "0")
        if not offset.isdigit():
            raise UsageError("offset: must be an integer, 0 or more")
        return cls(int(limit) if limit is not None else None, int(offset))

    def rows(self, session: Session, query: Select[T]) -> tuple[list[Any], int]:
        """One page of `query` (already ordered) and the number of rows in all pages."""
        total = int(session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0)
        paged = query.offset(self.offset)
        if self.limit is not None:
            paged = paged.limit(self.limit)
        return list(session.scalars(paged)), total

    def answer(self, key: str, items: list[Any], total: int) -> dict[str, Any]:
        return {key: items, "total": total, "offset": self.offset, "limit": self.limit}
