"""The server's errors: one root, :class:`ApiError`, whose subclasses each carry their HTTP status,
a stable ``code`` and a message template with named fields. One exception handler
(:func:`server.app.install_error_handler`) renders every error as
``{"error": {"code", "message", "details"}}``; nothing else in the server picks a status.

Packages raise these directly when the error is the caller's to see (the agent session errors
in :mod:`server.agents.types` derive from :class:`ApiError` too); other domain errors (a bad
selector, an asset name, a config patch) are translated into one of these at the edge, where
the field name is known. Errors from the HTTP framework itself (unknown route, wrong method,
request validation) are turned into :class:`ApiError` by :func:`from_framework` so that they,
too, pass through the one handler.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar


class ApiError(Exception):
    """Root of every error the REST API answers with (500 ``internal`` by itself)."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"
    template: ClassVar[str] = "internal error"

    def __init__(
        self, details: Any = None, *, headers: Mapping[str, str] | None = None, **fields: Any
    ) -> None:
        self.fields = fields
        self.details = details
        self.headers: dict[str, str] = self.default_headers() | dict(headers or {})
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return self.template.format(**self.fields)

    def default_headers(self) -> dict[str, str]:
        """Response headers every error of this class carries."""
        return {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class Unauthenticated(ApiError):
    status, code, template = 401, "unauthenticated", "missing or invalid bearer token"

    def default_headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(ApiError):
    status, code, template = 403, "forbidden", "role {role} may not {action}"


class NotFound(ApiError):
    status, code, template = 404, "not_found", "{kind} {key!r} not found"


class RouteNotFound(ApiError):
    """No route for this path (the framework's 404)."""

    status, code, template = 404, "not_found", "{message}"


class MethodNotAllowed(ApiError):
    status, code, template = 405, "method_not_allowed", "{message}"


class HttpError(ApiError):
    """Any other error the HTTP framework raises itself; its status is per instance."""

    code, template = "http_error", "{message}"

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        self.status = status  # type: ignore[misc]
        super().__init__(headers=headers, message=message)


class Conflict(ApiError):
    status, code, template = 409, "conflict", "{message}"


class PhaseTransitionRefused(ApiError):
    """A PATCH asked for a phase change the lifecycle does not allow
    (:mod:`server.inventory.phases`)."""

    status, code, template = (
        409,
        "phase_transition",
        ("machine {machine} cannot go from phase {current} to {target}; allowed: {allowed}"),
    )


class TooLarge(ApiError):
    status, code, template = 413, "too_large", "{message}"


class RangeNotSatisfiable(ApiError):
    status, code, template = 416, "range_not_satisfiable", "range outside the asset ({size} bytes)"

    def default_headers(self) -> dict[str, str]:
        return {"Content-Range": f"bytes */{self.fields['size']}", "Accept-Ranges": "bytes"}


class Invalid(ApiError):
    status, code, template = 422, "invalid", "{message}"


class UnsafeProfile(ApiError):
    """A stored boot profile fails the renderer's safety checks (stored around the API)."""

    status, code, template = 500, "unsafe_profile", "{message}"


class ServiceBusy(ApiError):
    """The database is busy (SQLite's single writer under a burst, or an exhausted pool): a
    moment, not a bug. Firmware and the CLI retry after ``Retry-After``."""

    status, code, template = 503, "unavailable", "database busy, retry shortly"

    def default_headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class AgentUnavailable(ApiError):
    status, code, template = 409, "agent_unavailable", "{message}"


class AgentOnOtherReplica(ApiError):
    status, code, template = 409, "agent_on_other_replica", "{message}"


class AgentNeverConnected(ApiError):
    """A command for a machine whose agent never enrolled nor said hello: queuing it would
    answer "queued" for something no agent will ever receive."""

    status, code = 409, "agent_never_connected"
    template = (
        "machine {machine} has never had a connected agent: nothing would deliver the {command}"
    )


def from_framework(exc: Exception) -> ApiError:
    """The :class:`ApiError` for an exception the web framework raised (or any other): route
    not found, method not allowed, request validation; anything unknown is a 500 ``internal``
    whose message says nothing of the cause (that goes to the log)."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, RequestValidationError):
        return _request_invalid(exc)
    if isinstance(exc, HTTPException):
        for cls in (RouteNotFound, MethodNotAllowed):
            if cls.status == exc.status_code:
                return cls(headers=exc.headers, message=str(exc.detail))
        return HttpError(exc.status_code, str(exc.detail), exc.headers)
    return ApiError()


def _request_invalid(exc: Any) -> Invalid:
    details = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    first = details[0] if details else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"] if p != "body")
    return Invalid(details, message=f"{where}: {first['msg']}" if where else first["msg"])
