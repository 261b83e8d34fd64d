"""The scenario's JSON Schema, generated from the language's own field specs.

`kalab.scenario` describes every field of a scenario once, as a spec with its
type, bounds, choices, default and doc; its checker reads those specs, and
this module only translates them into JSON Schema (draft 2020-12). The result
is committed as ``schema/scenario.schema.json``; each bundled scenario names
it on its first line (``# yaml-language-server: $schema=...``) so editors
complete and check scenarios as they are typed. A test checks that the
committed file is still what this generates, and that the schema accepts
whatever `kalab check` accepts. After changing a spec, regenerate it:

    python -m kalab.scenario_schema --write

What a schema cannot say (a request ref that names no request, an ``at``
going back in time, a session's planned time, unique names, an app file that
exists) only the checker checks: it may refuse what the schema allows.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from kalab import scenario as spec_mod
from kalab.course import lab
from kalab.render.schema import command, dump
from kalab.spec import ListOf, MapOf, OneOf, Record, Scalar, Spec

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schema" / "scenario.schema.json"
DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "urn:kalab:scenario"
_TYPES = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean",
          "text": ["string", "number"]}
# Specs that get a name in $defs; a copy with only its doc changed refers to it too.
DEFS: dict[str, Spec] = {
    "Session": spec_mod.SESSION, "Step": spec_mod.STEP, "Request": spec_mod.REQUEST,
    "Engine": spec_mod.ENGINE, "Expectation": spec_mod.EXPECTATION, "Close": spec_mod.CLOSE,
    "App": spec_mod.APP, "LinkImpairment": spec_mod.LINK_IMPAIRMENT, "RequestRef": spec_mod.REF,
    "RequestRefs": spec_mod.REFS, "Course": lab.COURSE, "Question": lab.QUESTION,
}
# A lab's ${EXPR} (`kalab.course.lab`) may stand for any scalar but the params' own:
# it is replaced before the value is checked, so the schema takes it as it is.
SUBSTITUTED = {"description": "${EXPR}: a lab's params, or arithmetic on them, replaced "
               "before the value is checked (kalab.course.lab)",
               "type": "string", "pattern": r"\$\{"}


def _def_name(spec: Spec) -> str | None:
    for name, named in DEFS.items():
        if spec is named or (type(spec) is type(named)
                             and dataclasses.replace(spec, doc=named.doc) == named):
            return name
    return None


def _schema(spec: Spec, top: bool = False, substituted: bool = True) -> dict[str, Any]:
    """``spec`` in JSON Schema; a named one as a $ref (with its own doc), unless ``top``;
    its scalars may be a ${EXPR} unless ``substituted`` is False (a lab's params)."""
    if spec is lab.PARAMS:
        substituted = False
    name = None if top else _def_name(spec)
    if name is not None:
        return {"$ref": f"#/$defs/{name}", "description": spec.doc}
    if isinstance(spec, Scalar):
        return _scalar(spec, substituted)
    if isinstance(spec, Record):
        return _record(spec, substituted)
    if isinstance(spec, ListOf):
        return {"description": spec.doc, "type": "array",
                "items": _schema(spec.item, substituted=substituted),
                "minItems": spec.min_items, "maxItems": spec.max_items}
    if isinstance(spec, MapOf):
        # keys are never substituted
        key = {k: v for k, v in _scalar(spec.key, False).items()
               if k not in ("type", "description")}
        return {"description": spec.doc, "type": "object", "propertyNames": key,
                "additionalProperties": _schema(spec.value, substituted=substituted),
                "maxProperties": spec.max_items}
    if not isinstance(spec, OneOf):
        raise TypeError(f"no JSON Schema for {spec!r}")
    schema = {"description": spec.doc,
              "anyOf": [_schema(option, substituted=substituted) for option in spec.options]}
    if spec.default is not None:
        schema["default"] = spec.default
    return schema


def _scalar(spec: Scalar, substituted: bool = True) -> dict[str, Any]:
    """A scalar's schema: its type and bounds, or, when ``substituted``, those or a
    ${EXPR} (its doc and default stay outside, where editors show them)."""
    schema = _bare_scalar(spec)
    if not substituted:
        return {"description": spec.doc, **schema}
    default = schema.pop("default", None)
    out: dict[str, Any] = {"description": spec.doc,
                           "anyOf": [schema, {"$ref": "#/$defs/Substituted"}]}
    if default is not None:
        out["default"] = default
    return out


def _bare_scalar(spec: Scalar) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": _TYPES[spec.type]}
    if spec.choices:
        schema["enum"] = list(spec.choices)
    for key, value in (("minimum", spec.minimum), ("exclusiveMinimum", spec.exclusive_minimum),
                       ("maximum", spec.maximum), ("maxLength", spec.max_length)):
        if value is not None:
            schema[key] = value
    if spec.pattern is not None:
        schema["pattern"] = f"^(?:{spec.pattern})$"  # the checker matches the whole value
    if spec.default is not None:
        schema["default"] = spec.default
    return schema


def _option(spec: Spec, substituted: bool) -> dict[str, Any]:
    """A kind's setting: a scalar, or a record of its own (a proxy's behind:)."""
    return _scalar(spec, substituted) if isinstance(spec, Scalar) else \
        _schema(spec, substituted=substituted)


def _record(spec: Record, substituted: bool = True) -> dict[str, Any]:
    properties = {key: _schema(field, substituted=substituted)
                  for key, field in spec.fields.items()}
    schema: dict[str, Any] = {"description": spec.doc, "type": "object"}
    rules: list[dict[str, Any]] = []
    if spec.switch:
        # Each kind's own settings: listed once for editors, then checked per kind.
        every = sorted({key for options in spec.kinds.values() for key in options})
        differ = set()  # settings that are not the same for every kind that has them
        for key in every:
            specs = {kind: options[key] for kind, options in spec.kinds.items() if key in options}
            kinds_by_doc: dict[str, list[str]] = {}
            for kind, option in specs.items():
                kinds_by_doc.setdefault(option.doc, []).append(kind)
            docs = "; ".join(f"{', '.join(kinds)}: {doc}" for doc, kinds in kinds_by_doc.items())
            first = next(iter(specs.values()))
            same = all(dataclasses.replace(option, doc=first.doc) == first
                       for option in specs.values())
            properties[key] = {**(_option(first, substituted) if same else {}),
                               "description": docs}
            if not same:
                differ.add(key)
        for kind, options in spec.kinds.items():
            # Here the settings of other kinds are refused, and a setting described
            # differently for this kind than for all is described again.
            then = {key: False if key not in options else _option(options[key], substituted)
                    for key in every if key not in options or key in differ}
            # The kind a record has without its switch field applies when it is absent.
            when: dict[str, Any] = {"properties": {spec.switch: {"const": kind}}}
            if kind != spec.switch_default:
                when["required"] = [spec.switch]
            rules.append({"if": when, "then": {"properties": then}})
    schema["properties"] = properties
    schema["additionalProperties"] = False
    if spec.required:
        schema["required"] = list(spec.required)
    if spec.one_of:
        rules.append({"oneOf": [{"required": [key]} for key in spec.one_of]})
    if rules:
        schema["allOf"] = rules
    return schema


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a scenario file, from `kalab.scenario`'s specs."""
    top = _record(spec_mod.SCENARIO)
    return {
        "$schema": DIALECT,
        "$id": SCHEMA_ID,
        "title": "kalab scenario",
        **top,
        "$defs": {**{name: _schema(spec, top=True) for name, spec in sorted(DEFS.items())},
                  "Substituted": SUBSTITUTED},
    }


def as_text() -> str:
    return dump(json_schema())


def main(argv: list[str] | None = None) -> int:
    return command("the scenario", SCHEMA_FILE, as_text, argv)


if __name__ == "__main__":
    sys.exit(main())
