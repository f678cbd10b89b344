"""API errors: each carries its HTTP status and a stable code; one handler renders them as
``{"error": {"code", "message", "details"}}``. Messages are templates with named fields."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    status: int = 500
    code: str = "internal"
    template: str = "internal error"

    def __init__(self, details: Any = None, **fields: Any) -> None:
        self.fields = fields
        self.details = details
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return self.template.format(**self.fields)


class Unauthenticated(ApiError):
    status, code, template = 401, "unauthenticated", "missing or invalid bearer token"


class Forbidden(ApiError):
    status, code, template = 403, "forbidden", "role {role} may not {action}"


class NotFound(ApiError):
    status, code, template = 404, "not_found", "{kind} {key!r} not found"


class Conflict(ApiError):
    status, code, template = 409, "conflict", "{message}"


class Invalid(ApiError):
    status, code, template = 422, "invalid", "{message}"
