"""Errors the server answers in OpenAI's shape, raised anywhere in the serving package (routes, engine, adapters).

Plain data, so the engine needs neither FastAPI nor the routes: ``app`` turns an ``ApiError`` into its response.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ApiError(Exception):
    """An error to answer in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None
    kind: str = "invalid_request_error"
    headers: dict[str, str] | None = None

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict:
        """The JSON body; a lone surrogate quoted from a request is escaped, or the answer could not be encoded."""
        message = self.message.encode("utf-8", "backslashreplace").decode("utf-8")
        return {"error": {"message": message, "type": self.kind, "param": self.param, "code": self.code}}


def shutting_down() -> ApiError:
    return ApiError(503, "the server is shutting down", kind="server_error")


def busy(max_queue: int) -> ApiError:
    message = f"server busy: {max_queue} requests are already waiting or running; retry shortly"
    return ApiError(429, message, None, "rate_limit_exceeded", "rate_limit_error", {"Retry-After": "1"})
