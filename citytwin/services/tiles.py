"""(being built)"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter


def router(ctx: Any) -> APIRouter:
    """The routes of this service."""
    return APIRouter()
