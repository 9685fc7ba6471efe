"""Typed errors raised below the edges; the CLI and the API turn them into exit codes and statuses."""

from __future__ import annotations


class DroverError(Exception):
    """A failure a user can act on: what went wrong and, where known, how to fix it."""

    exit_code = 1
    http_status = 500

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(DroverError):
    exit_code = 2
    http_status = 500


class UsageError(DroverError):
    exit_code = 2
    http_status = 400


class NotFound(DroverError):
    exit_code = 4
    http_status = 404


class Conflict(DroverError):
    exit_code = 5
    http_status = 409


class TooManyRequests(DroverError):
    """An unauthenticated source asked too often (appliance.ratelimit)."""

    exit_code = 1
    http_status = 429


class PayloadTooLarge(UsageError):
    http_status = 413


class IdentityConflict(Conflict):
    """Two machines claim one identity (a DMI UUID, an FQDN, a MAC): refused, and an admin is warned."""

    def __init__(self, message: str, hint: str = "", *, host_id: int | None = None, subject: str = "") -> None:
        super().__init__(message, hint)
        self.host_id = host_id  # the enrolled host whose identity was claimed
        self.subject = subject


class ToolMissing(DroverError):
    """A program drover needs is not installed."""

    exit_code = 3


class CommandFailed(DroverError):
    """A subprocess exited non-zero; the message carries a command line one can paste and re-run."""

    exit_code = 3

    def __init__(self, message: str, hint: str = "", returncode: int = 1, output: str = "") -> None:
        super().__init__(message, hint)
        self.returncode = returncode
        self.output = output


class UpstreamError(DroverError):
    """Something the appliance relies on answered wrongly or not at all (a host's BMC): 502 at the API."""

    exit_code = 3
    http_status = 502


class DatabaseError(DroverError):
    exit_code = 6
    http_status = 503


class KerberosError(DroverError):
    exit_code = 7
    http_status = 503


class AuthError(DroverError):
    exit_code = 8
    http_status = 401


class Forbidden(DroverError):
    """Authenticated, but the caller's roles do not allow this."""

    exit_code = 9
    http_status = 403
