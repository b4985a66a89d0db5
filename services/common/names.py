"""Resource names (`projects/{project}/runs/{run}`): parsing with field-precise errors."""

from __future__ import annotations

import re

from . import errors

PROJECT_ID = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
RESOURCE_ID = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


def parse(name: str, pattern: str, *, field: str = "name") -> dict[str, str]:
    """Match `name` against a pattern like `projects/{project}/runs/{run}`; return the ids."""
    name_parts = name.split("/")
    pattern_parts = pattern.split("/")
    if len(name_parts) != len(pattern_parts):
        raise errors.InvalidArgument.field(
            field, f"{name!r} is not a resource name of the form {pattern}", "BAD_NAME")
    ids: dict[str, str] = {}
    for got, want in zip(name_parts, pattern_parts):
        if want.startswith("{"):
            key = want[1:-1]
            if not got or len(got) > 128 or not re.match(r"^[A-Za-z0-9_.-]+$", got):
                raise errors.InvalidArgument.field(
                    field, f"{name!r}: {key} id {got!r} is not valid", "BAD_NAME")
            ids[key] = got
        elif got != want:
            raise errors.InvalidArgument.field(
                field, f"{name!r} is not a resource name of the form {pattern}", "BAD_NAME")
    return ids


def project_of(parent: str, *, field: str = "parent") -> str:
    return parse(parent, "projects/{project}", field=field)["project"]


def check_id(value: str, *, field: str, pattern: re.Pattern[str] = RESOURCE_ID) -> None:
    if not pattern.match(value or ""):
        raise errors.InvalidArgument.field(
            field, f"{value!r} is not a valid id: use lower-case letters, digits, '-' or '_', "
                   "starting with a letter, at most 63 characters", "BAD_ID")
