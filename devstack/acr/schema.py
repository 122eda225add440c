"""Request-body shapes of the REST API specification, and the 400 ARM gives when one is broken.

A shape is a tree of :class:`Field`; :func:`check_body` parses a request's JSON and checks it:
required properties, property names, JSON types and enum values. The error imitates what an
ARM resource provider written in .NET answers when its JSON deserialiser refuses the content::

    400 {"error": {"code": "InvalidRequestContent",
                   "message": "The request content was invalid and could not be deserialized:
                               'Required property 'sourceImage' not found in JSON. Path 'source'.'."}}

Two deliberate differences from ARM (not confirmed against the service): ARM ignores unknown
property names, the emulator refuses them (a misspelt field in our code must not pass silently);
the line/position suffix of the .NET message is left out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, cast

from devstack.acr.core import Request, Response, arm_error

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
    "object": (dict,),
    "array": (list,),
}


@dataclass(frozen=True)
class Field:
    """One property's shape: JSON type, required-ness, enum, nested properties or items.

    ``additional`` (objects only) is the shape of every property not named in ``properties``
    (a string-to-string map, say); None refuses unknown names. Enums compare
    case-insensitively, as .NET's string-enum converter does.
    """

    type: str
    required: bool = False
    enum: tuple[str, ...] | None = None
    properties: dict[str, Field] = field(default_factory=dict)
    items: Field | None = None
    additional: Field | None = None
    nullable: bool = True


class ShapeError(Exception):
    """A body that does not fit its shape; the message is the deserialiser's."""


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "Boolean"
    if isinstance(value, int | float):
        return "Integer" if isinstance(value, int) else "Float"
    if isinstance(value, str):
        return "String"
    if isinstance(value, list):
        return "StartArray"
    if isinstance(value, dict):
        return "StartObject"
    return "Null"


def check(value: Any, shape: Field, path: str = "") -> None:
    """Raise :class:`ShapeError` if ``value`` does not fit ``shape``."""
    where = path or "''"
    if value is None:
        if not shape.nullable:
            raise ShapeError(
                f"Required property at '{where}' expects a non-null value. Path '{path}'."
            )
        return
    types = _JSON_TYPES[shape.type]
    if not isinstance(value, types) or (
        shape.type in ("integer", "number") and isinstance(value, bool)
    ):
        raise ShapeError(
            f"Error converting value {json.dumps(value)[:60]} ({_kind(value)}) to type "
            f"'{shape.type}'. Path '{path}'."
        )
    if shape.enum is not None and str(value).lower() not in {e.lower() for e in shape.enum}:
        raise ShapeError(
            f"Error converting value \"{value}\" to type 'enum'. The allowed values are "
            f"{', '.join(repr(e) for e in shape.enum)}. Path '{path}'."
        )
    # (isinstance against a looked-up tuple of types narrows to object: say what was checked)
    if shape.type == "object":
        members = cast(dict[str, Any], value)
        for name, sub in shape.properties.items():
            if sub.required and name not in members:
                raise ShapeError(f"Required property '{name}' not found in JSON. Path '{path}'.")
        for name, item in members.items():
            sub_path = f"{path}.{name}" if path else name
            member = shape.properties.get(name) or shape.additional
            if member is None:
                raise ShapeError(
                    f"Could not find member '{name}' on the request type. Path '{sub_path}'."
                )
            check(item, member, sub_path)
    if shape.type == "array" and shape.items is not None:
        for index, item in enumerate(cast(list[Any], value)):
            check(item, shape.items, f"{path}[{index}]")


def check_body(req: Request, shape: Field) -> tuple[Any, Response | None]:
    """Parse and check a JSON body: ``(body, None)`` if fine, else ``(None, the 400)``."""
    try:
        body = req.json()
    except (ValueError, UnicodeDecodeError) as exc:
        return None, invalid_content(
            f"Unexpected character encountered while parsing value: {exc}."
        )
    try:
        check(body, shape)
    except ShapeError as exc:
        return None, invalid_content(str(exc))
    return body, None


def invalid_content(detail: str) -> Response:
    """ARM's 400 for a body that cannot be deserialised."""
    return arm_error(
        400,
        "InvalidRequestContent",
        f"The request content was invalid and could not be deserialized: '{detail}'.",
    )


def string(required: bool = False, enum: tuple[str, ...] | None = None) -> Field:
    """A string property."""
    return Field("string", required=required, enum=enum)


def strings(required: bool = False) -> Field:
    """An array of strings."""
    return Field("array", required=required, items=Field("string"))


# -- Microsoft.ContainerRegistry, registries/importImage ---------------------------------------
# From the REST specification (stable/2023-07-01 containerregistry.json, definitions
# ImportImageParameters / ImportSource / ImportSourceCredentials, unchanged in the 2025-11-01
# models of azure-mgmt-containerregistry 15.0.0): source and source.sourceImage and
# credentials.password are required; mode is the enum ImportMode (NoForce, Force).

IMPORT_IMAGE_PARAMETERS = Field(
    "object",
    properties={
        "source": Field(
            "object",
            required=True,
            properties={
                "resourceId": string(),
                "registryUri": string(),
                "credentials": Field(
                    "object",
                    properties={"username": string(), "password": string(required=True)},
                ),
                "sourceImage": string(required=True),
            },
        ),
        "targetTags": strings(),
        "untaggedTargetRepositories": strings(),
        "mode": string(enum=("NoForce", "Force")),
    },
)


SET_VALUE = Field(
    "object",
    properties={
        "name": string(required=True),
        "value": string(required=True),
        "isSecret": Field("boolean"),
    },
)
"""A SetValue of the specification (a task value or argument)."""
