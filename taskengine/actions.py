"""The registry of what the task engine can run: one handler per task type, and optionally how to reconcile it.

A handler module registers with `@action(TaskType.X)`; the handler gets a TaskContext and returns the
task's result (a JSON-able dict, or None). It raises to fail the task: a DroverError's text becomes the
task's (and the VM's) error; a transient libvirt error (connection lost, host briefly away) is retried by
the worker with back-off. `@reconciler(TaskType.X)` registers what to do with a task whose worker died
holding it (its lease ran out): look at libvirt's real state, then say FINISHED, FAILED or RERUN. A type
without a reconciler fails such a task rather than risk doing its side effect twice.

The modules in MODULES are imported by the worker; a new family of actions adds its module there.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

import libvirt
from sqlalchemy.orm import Session

from appliance.db.models import Host, TaskType
from appliance.errors import DroverError

log = logging.getLogger(__name__)

# The handler modules; each registers its task types when imported.
MODULES: tuple[str, ...] = ("taskengine.vmlife", "taskengine.migration")


class TaskAborted(DroverError):
    """The user asked to abort the running task (`drover task cancel` of a migration)."""

    exit_code = 5
    http_status = 409


class Deferred(DroverError):
    """Not now (e.g. the host already runs its maximum of migrations): back in the queue, no attempt counted."""

    def __init__(self, message: str, seconds: float = 1.0) -> None:
        super().__init__(message)
        self.seconds = seconds


class LeaseLost(DroverError):
    """Another worker holds the task now (this one stalled past its lease): stop, write nothing."""


class Verdict(enum.StrEnum):
    FINISHED = "finished"  # the side effect happened: record success
    FAILED = "failed"  # it cannot be known or completed: record failure
    RERUN = "rerun"  # it did not happen: run the handler again


@dataclass(frozen=True)
class Reconciled:
    verdict: Verdict
    result: dict[str, Any] | None = None
    error: str = ""


@dataclass(frozen=True)
class TaskInfo:
    """The task as claimed: what a handler may read without a session."""

    id: int
    type: TaskType
    target_id: int
    args: dict[str, Any] = field(default_factory=dict)
    attempts: int = 1
    created_by: str | None = None


class TaskContext:
    """What a handler gets: the task, database sessions, libvirt connections, progress and the lease.

    The worker builds it; handlers call only these methods.
    """

    def __init__(
        self,
        task: TaskInfo,
        session_scope: Callable[[], AbstractContextManager[Session]],
        connector: Callable[[Host], libvirt.virConnect],
        reporter: Callable[[float, str], None],
        renewer: Callable[[], None],
        abort_check: Callable[[], bool],
        settings: Any = None,
    ) -> None:
        self.task = task
        self._session_scope = session_scope
        self._connector = connector
        self._reporter = reporter
        self._renewer = renewer
        self._abort_check = abort_check
        # The worker's [taskengine] settings (appliance.config.TaskEngineConfig).
        self.settings = settings

    def session(self) -> AbstractContextManager[Session]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        return self._session_scope()

    def connect(self, host: Host) -> libvirt.virConnect:
        """The appliance's connection to `host`'s libvirtd (qemu+tcp://<fqdn>:<port>/system, drover@REALM).

        Shared with other tasks on the same host: never close it.
        """
        return self._connector(host)

    def progress(self, fraction: float, message: str = "") -> None:
        """Record how far the task is (0..1) and a line for `drover task wait`; also renews the lease."""
        self._reporter(min(1.0, max(0.0, fraction)), message)

    def renew(self) -> None:
        """Renew the lease now; raises LeaseLost if another worker took the task over."""
        self._renewer()

    def abort_requested(self) -> bool:
        """Whether a user asked to abort this task (polled by long handlers: migration)."""
        return self._abort_check()


Handler = Callable[[TaskContext], dict[str, Any] | None]
Reconciler = Callable[[TaskContext], Reconciled]

HANDLERS: dict[TaskType, Handler] = {}
RECONCILERS: dict[TaskType, Reconciler] = {}


def action(task_type: TaskType) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        if task_type in HANDLERS and HANDLERS[task_type] is not handler:
            raise RuntimeError(f"two handlers for {task_type}: {HANDLERS[task_type].__qualname__} and "
                               f"{handler.__qualname__}")  # fmt: skip
        HANDLERS[task_type] = handler
        return handler

    return register


def reconciler(task_type: TaskType) -> Callable[[Reconciler], Reconciler]:
    def register(fn: Reconciler) -> Reconciler:
        RECONCILERS[task_type] = fn
        return fn

    return register


def load() -> dict[TaskType, Handler]:
    """Import every handler module (once) and return the registry."""
    for module in MODULES:
        import_module(module)
    return HANDLERS


def handled() -> Iterator[TaskType]:
    return iter(sorted(load()))
