"""Import a WSGI app from a ``module:attribute`` reference."""

from __future__ import annotations

import importlib
from typing import Any


def load_app(ref: str) -> Any:
    module_name, _, attribute = ref.partition(":")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise SystemExit(f"{ref}: module {module_name} has no attribute {attribute!r}") from None
