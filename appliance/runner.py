"""The one way drover starts a subprocess: argument list, explicit environment, stdin closed, logged."""

from __future__ import annotations

import collections
import logging
import os
import shlex
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from appliance.errors import CommandFailed, ToolMissing

log = logging.getLogger(__name__)

# Inherited from the caller unless the caller overrides them; everything else must be passed explicitly
# so a build or a daemon never depends on whatever happened to be exported in the admin's shell.
_PASSTHROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TERM", "TMPDIR", "USER", "LOGNAME")

# Which Debian package provides a tool, so a missing tool gets a fix and not just a name.
PACKAGE_OF: dict[str, str] = {
    "kdb5_util": "krb5-kdc",
    "krb5kdc": "krb5-kdc",
    "kadmin.local": "krb5-kdc",
    "kadmind": "krb5-admin-server",
    "kadmin": "krb5-user",
    "kinit": "krb5-user",
    "klist": "krb5-user",
    "kdestroy": "krb5-user",
    "libvirtd": "libvirt-daemon",
    "virsh": "libvirt-clients",
    "virtlogd": "libvirt-daemon",
    "mmdebstrap": "mmdebstrap",
    "mksquashfs": "squashfs-tools",
    "unsquashfs": "squashfs-tools",
    "xorriso": "xorriso",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "dnsmasq": "dnsmasq-base",
    "initdb": "postgresql",
    "pg_ctl": "postgresql",
    "collectd": "collectd-core",
    "livemedia-creator": "lorax (Fedora only)",
    "grub-mkrescue": "grub-common",
    "mformat": "mtools",
    "ipmitool": "ipmitool",
}


def which(tool: str) -> str:
    """Absolute path of `tool`, or ToolMissing naming the package that provides it."""
    extra = ("/usr/sbin", "/sbin", "/usr/lib/postgresql/15/bin")
    path = os.environ.get("PATH", "") + ":" + ":".join(extra)
    found = shutil.which(tool, path=path)
    if found is None:
        pkg = PACKAGE_OF.get(tool, "")
        hint = f"install it: apt-get install {pkg}" if pkg else "install it or put it on PATH"
        raise ToolMissing(f"required tool {tool!r} not found", hint)
    return found


def environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in _PASSTHROUGH if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["PATH"] += ":/usr/sbin:/sbin"
    if extra:
        env.update(extra)
    return env


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input: str | None = None,
    check: bool = True,
    capture: bool = True,
    timeout: float | None = None,
    on_output: Callable[[str], None] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv; raise ToolMissing if argv[0] is not installed, CommandFailed if it exits non-zero.

    `env` is added to a small allow-listed environment, never to the caller's whole environment.
    With `on_output`, each output line is handed over as it arrives (progress displays) and the
    child runs in its own process group, so an interrupt stops its whole tree, not just argv[0].
    """
    args = [os.fspath(a) for a in argv]
    if not args:
        raise ValueError("run() needs a command")
    if "/" not in args[0]:
        args[0] = which(args[0])
    cmdline = shlex.join(args)
    log.debug("run: %s", cmdline)
    if on_output is not None:
        proc = _run_streaming(args, cmdline, env, cwd, on_output, timeout)
        _check(proc, cmdline, check)
        return proc
    try:
        proc = subprocess.run(
            args,
            env=environment(env),
            cwd=cwd,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.STDOUT if capture else None,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ToolMissing(f"required tool {args[0]!r} not found", "install it or put it on PATH") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandFailed(f"timed out after {timeout}s: {cmdline}", returncode=-1) from exc
    _check(proc, cmdline, check)
    return proc


def _check(proc: subprocess.CompletedProcess[str], cmdline: str, check: bool) -> None:
    if check and proc.returncode != 0:
        output = (proc.stdout or "").strip()
        last = output.splitlines()[-1] if output else ""
        log.error("command failed (exit %s): %s", proc.returncode, cmdline)
        if output:
            log.error("%s", output[-4000:])
        raise CommandFailed(
            f"command failed with exit {proc.returncode}: {cmdline}" + (f": {last}" if last else ""),
            returncode=proc.returncode,
            output=output,
        )


# How much output a streamed command keeps for its error message; a build log can be megabytes.
_STREAM_TAIL_LINES = 400


def _run_streaming(
    args: list[str],
    cmdline: str,
    env: Mapping[str, str] | None,
    cwd: Path | None,
    on_output: Callable[[str], None],
    timeout: float | None,
) -> subprocess.CompletedProcess[str]:
    tail: collections.deque[str] = collections.deque(maxlen=_STREAM_TAIL_LINES)
    try:
        child = subprocess.Popen(
            args,
            env=environment(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise ToolMissing(f"required tool {args[0]!r} not found", "install it or put it on PATH") from exc
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        _stop_group(child)

    timer = threading.Timer(timeout, expire) if timeout is not None else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        assert child.stdout is not None  # Popen(stdout=PIPE) always sets it
        for line in child.stdout:
            tail.append(line)
            on_output(line.rstrip("\n"))
        child.wait()
    except BaseException:
        # KeyboardInterrupt or a SIGTERM turned into an exception: stop the child's whole tree.
        _stop_group(child)
        raise
    finally:
        if timer is not None:
            timer.cancel()
        if child.stdout is not None:
            child.stdout.close()
    if expired.is_set():
        raise CommandFailed(f"timed out after {timeout}s: {cmdline}", returncode=-1)
    return subprocess.CompletedProcess(args, child.returncode, "".join(tail), None)


def _stop_group(child: subprocess.Popen[str], grace: float = 10.0) -> None:
    """SIGTERM the child's process group, then SIGKILL whatever is left after `grace` seconds."""
    if child.poll() is not None:
        return
    try:
        os.killpg(child.pid, signal.SIGTERM)
        child.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    except ProcessLookupError:
        pass


def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log_file: Path | None = None,
    new_session: bool = False,
) -> subprocess.Popen[bytes]:
    """Start a long-running child (a daemon kept in the foreground) with the same rules as run().

    new_session: the terminal's Ctrl-C then reaches only us, and we stop the child in our own order.
    """
    args = [os.fspath(a) for a in argv]
    if "/" not in args[0]:
        args[0] = which(args[0])
    log.debug("spawn: %s", shlex.join(args))
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            args,
            env=environment(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,
        )
    finally:
        if log_file:
            out.close()  # type: ignore[union-attr]
