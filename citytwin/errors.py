"""Errors that tell the user what went wrong, where, and how to fix it."""

from __future__ import annotations


class CityTwinError(Exception):
    """Base class of every error CityTwin raises on purpose."""


class InvalidInput(CityTwinError):
    """Input data that can't be taken: names the source, the feature, the line and the fix."""

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        layer: str | None = None,
        feature: str | None = None,
        line: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.source = source
        self.layer = layer
        self.feature = feature
        self.line = line
        self.hint = hint
        super().__init__(str(self))

    def located(self, *, source: str | None = None, line: int | None = None) -> InvalidInput:
        """A copy with the source file (and line) filled in where they were not known yet."""
        return InvalidInput(
            self.message,
            source=self.source or source,
            layer=self.layer,
            feature=self.feature,
            line=self.line if self.line is not None else line,
            hint=self.hint,
        )

    def __str__(self) -> str:
        where = []
        if self.source:
            where.append(self.source)
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.layer:
            where.append(f"layer {self.layer}")
        if self.feature is not None:
            where.append(f"feature {self.feature}")
        text = (", ".join(where) + ": " if where else "") + self.message
        if self.hint:
            text += f" — {self.hint}"
        return text


class NotFound(CityTwinError):
    """A twin, layer or feature that does not exist (with a hint where to look)."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message + (f" — {hint}" if hint else ""))


class Unauthorized(CityTwinError):
    """A request without valid credentials (HTTP 401): none given, unknown, expired or revoked."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message + (f" — {hint}" if hint else ""))


class Forbidden(CityTwinError):
    """Valid credentials that do not grant what was asked (HTTP 403)."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message + (f" — {hint}" if hint else ""))


class RateLimited(CityTwinError):
    """Too many requests for a key's rate limit (HTTP 429); ``retry_after`` in seconds."""

    def __init__(self, message: str, *, retry_after: float, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        self.retry_after = retry_after
        super().__init__(message + (f" — {hint}" if hint else ""))


def yaml_error(exc: Exception, source: str) -> InvalidInput:
    """A YAML parser's error as ``InvalidInput`` naming the file and the line."""
    mark = getattr(exc, "problem_mark", None)
    return InvalidInput(
        f"not valid YAML: {getattr(exc, 'problem', None) or exc}",
        source=source,
        line=mark.line + 1 if mark is not None else None,
        hint="check indentation and quoting",
    )
