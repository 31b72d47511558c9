"""The operations console (being built)."""

from __future__ import annotations

from typing import Any


def mount(app: Any, ctx: Any) -> None:
    """Serve the console under ``/console``."""
