"""The report's JSON Schema, generated from the record's own definition.

`kalab.report` is the one place that defines the report: its dataclasses,
their field types and each field's ``doc=``. This module only translates
them into JSON Schema (draft 2020-12); the result is committed as
``schema/report.schema.json`` for tools outside Python, and a test checks
that the committed file is still what this generates. After changing the
record, regenerate it:

    python -m kalab.render.schema --write
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import inspect
import json
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kalab import report as report_mod

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schema" / "report.schema.json"
DIALECT = "https://json-schema.org/draft/2020-12/schema"
_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _type(hint: Any, defs: dict[str, Any]) -> dict[str, Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return {}
    if hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    if origin in (types.UnionType, typing.Union):
        options = [a for a in args if a is not type(None)]
        if len(options) != 1:
            raise TypeError(f"no JSON Schema for {hint!r}")
        inner = _type(options[0], defs)
        if set(inner) == {"type"}:
            return {"type": [inner["type"], "null"]}
        if set(inner) == {"type", "enum"}:
            return {"type": [inner["type"], "null"], "enum": [*inner["enum"], None]}
        return {"anyOf": [inner, {"type": "null"}]}
    if origin is list:
        return {"type": "array", "items": _type(args[0], defs)}
    if origin is dict:
        if args and args[0] is not str:
            raise TypeError(f"JSON object keys are strings: {hint!r}")
        values = _type(args[1], defs) if args else {}
        return {"type": "object", **({"additionalProperties": values} if values else {})}
    if isinstance(hint, type) and issubclass(hint, enum.StrEnum):
        return {"type": "string", "enum": [member.value for member in hint]}
    if dataclasses.is_dataclass(hint):
        name = hint.__name__
        if name not in defs:
            defs[name] = {}  # a placeholder first: a record may refer to itself
            defs[name] = _object(hint, defs)
        return {"$ref": f"#/$defs/{name}"}
    raise TypeError(f"no JSON Schema for {hint!r}")


def _object(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    required = []
    for f in dataclasses.fields(cls):
        prop = _type(hints[f.name], defs)
        if "doc" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} has no doc=: every field is documented")
        prop = {"description": f.metadata["doc"], **prop}
        if f.default is not dataclasses.MISSING:
            prop["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            prop["default"] = f.default_factory()
        else:
            required.append(f.name)  # what from_dict cannot do without
        properties[f.name] = prop
    return {"type": "object", "description": inspect.cleandoc(cls.__doc__ or ""),
            "properties": properties, "required": required, "additionalProperties": False}


def json_schema() -> dict[str, Any]:
    """The JSON Schema of report.json, from `kalab.report`'s dataclasses and docs."""
    defs: dict[str, Any] = {}
    top = _object(report_mod.Report, defs)
    top["properties"]["schema"]["const"] = report_mod.SCHEMA
    return {
        "$schema": DIALECT,
        "$id": f"urn:{report_mod.SCHEMA.replace('/', ':')}",
        "title": f"kalab run report ({report_mod.SCHEMA})",
        **top,
        "description": inspect.cleandoc(report_mod.__doc__ or ""),
        "$defs": dict(sorted(defs.items())),
    }


def as_text() -> str:
    return dump(json_schema())


def dump(schema: dict[str, Any]) -> str:
    """A generated schema as committed. Strict: a NaN here could only be a default in the
    code, a bug to fix, not to hide."""
    return json.dumps(schema, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def command(what: str, path: Path, text: Callable[[], str],
            argv: list[str] | None = None) -> int:
    """Print a generated schema, or ``--write`` it to ``path``, or ``--check`` that the
    committed file is current (exit 1 if not): the same command for every schema."""
    parser = argparse.ArgumentParser(description=f"Print (or write) {what}'s JSON Schema.")
    parser.add_argument("--write", action="store_true", help=f"write it to {path}")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the committed file differs from what is generated")
    args = parser.parse_args(argv)
    generated = text()
    if args.check:
        same = path.is_file() and path.read_text(encoding="utf-8") == generated
        print(f"{path}: {'up to date' if same else 'stale: run with --write'}")
        return 0 if same else 1
    if args.write:
        path.parent.mkdir(exist_ok=True)
        path.write_text(generated, encoding="utf-8")
        print(f"wrote {path}")
        return 0
    sys.stdout.write(generated)
    return 0


def main(argv: list[str] | None = None) -> int:
    return command("report.json", SCHEMA_FILE, as_text, argv)


if __name__ == "__main__":
    sys.exit(main())
