"""The UI's events page: what the database recorded, filtered by object (a host or a VM), severity, kind and
time range, a page at a time; the live region refreshes it as new events arrive (page 1 shows them)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from appliance import permissions
from appliance.api.auth import caller
from appliance.api.state import session
from appliance.db.base import utcnow
from appliance.db.models import Event, Host, Severity, Vm
from appliance.errors import NotFound, UsageError
from appliance.permissions import Privilege
from appliance.text import as_id
from appliance.web.pages import PAGE_SIZE, _pager, render

SINCE = {"1h": timedelta(hours=1), "6h": timedelta(hours=6), "1d": timedelta(days=1), "7d": timedelta(days=7)}


def _object(s: Session, model: type[Host] | type[Vm], text: str) -> int:
    """A host's or VM's id from its id or name; NotFound names what was asked for."""
    name_col = Host.hostname if model is Host else Vm.name
    clauses = [name_col == text] + ([model.id == key] if (key := as_id(text)) is not None else [])
    found = s.scalars(select(model.id).where(or_(*clauses))).all()
    what = "host" if model is Host else "VM"
    if not found:
        raise NotFound(f"no {what} {text!r}", f"give the {what}'s name or id")
    return int(found[0])


def event_list(request: Request) -> Response:
    params = request.query_params
    severity, kind, since = params.get("severity", ""), params.get("kind", "")[:64], params.get("since", "")
    host_key, vm_key = params.get("host", "").strip()[:255], params.get("vm", "").strip()[:255]
    if severity and severity not in set(Severity):
        raise UsageError(f"severity: one of {', '.join(Severity)}")
    if since and since not in SINCE:
        raise UsageError(f"since: one of {', '.join(SINCE)} (or empty for all)")
    with session(request) as s:
        permissions.require(s, caller(request).principal, Privilege.VIEW, None, "see events")
        query = select(Event)
        if severity:
            query = query.where(Event.severity == Severity(severity))
        if kind:
            query = query.where(Event.kind.startswith(kind, autoescape=True))
        if since:
            query = query.where(Event.at >= utcnow() - SINCE[since])
        if host_key:
            query = query.where(Event.host_id == _object(s, Host, host_key))
        if vm_key:
            query = query.where(Event.vm_id == _object(s, Vm, vm_key))
        total = int(s.scalar(select(func.count()).select_from(query.subquery())) or 0)
        pager = _pager(request, total)
        rows = list(s.scalars(query.order_by(Event.id.desc()).offset(pager.offset).limit(PAGE_SIZE)))
        return render(request, "events.html", events=rows, severity=severity, kind=kind, since=since, host=host_key,
                      vm=vm_key, pager=pager, spans=list(SINCE), above="events_filter.html")  # fmt: skip
