"""Blueprints: validated before they are saved, one immutable version per accepted change."""

from __future__ import annotations

from typing import Any

import psycopg
from iceos.registry.v1 import blueprint_pb2

from services.common import errors, names
from services.common.blueprint import authoring
from services.common.db import Database

from . import convert, filters, references, store
from .versioned import Prepared, Versioned


class Blueprints(Versioned):
    table = store.BLUEPRINTS
    collection = "blueprints"
    singular = "blueprint"
    filter_fields = filters.BLUEPRINT_FIELDS
    writable = ("display_name", "description", "input_schema", "output", "nodes",
                "run_timeout")
    output_only = convert.OUTPUT_ONLY

    def __init__(self, db: Database) -> None:
        super().__init__(db)

    async def prepare(self, conn: psycopg.AsyncConnection, project_id: str, resource_id: str,
                      content: blueprint_pb2.Blueprint, *, prefix: str) -> Prepared:
        violations = await references.validate_blueprint(
            conn, project_id, content, prefix=prefix, self_id=resource_id)
        if violations:
            raise _invalid(violations)
        return Prepared(convert.spec_of(content), content.SerializeToString(),
                        {"display_name": content.display_name,
                         "description": content.description})

    def to_proto(self, row: dict[str, Any]) -> blueprint_pb2.Blueprint:
        return convert.blueprint(row)

    def version_proto(self, row: dict[str, Any]) -> Any:
        return convert.blueprint_version(row)

    def check_change(self, old: Any, new: Any) -> None:
        return None

    async def validate(self, parent: str, blueprint: blueprint_pb2.Blueprint,
                       source: str = "") -> list[errors.FieldViolation]:
        """Every violation, writing nothing. Paths are relative to the blueprint
        (`nodes[3].loop.body[0].depends_on[1]`). When `blueprint.name` names a blueprint of
        this project, workflow cycles back to it are found too. `source` (YAML or JSON text)
        replaces `blueprint` and is loaded strictly: shape mistakes are violations too."""
        project_id = names.project_of(parent)
        if source:
            if blueprint.ByteSize():
                raise errors.InvalidArgument.field(
                    "source", "set blueprint or source, not both", "CONFLICT")
            try:
                blueprint = authoring.load_blueprint(source, source="source")
            except errors.InvalidArgument as exc:
                return exc.violations
        self_id = None
        if blueprint.name:
            self_id = references.local_id(project_id, blueprint.name, "blueprints")
            if self_id is None:
                return [errors.FieldViolation(
                    "name", f"{blueprint.name!r} is not a blueprint of {parent}; leave it "
                            "empty or give projects/<project>/blueprints/<id>", "BAD_NAME")]
        content = convert.content_of(blueprint)
        async with self.db.connection() as conn:
            return await references.validate_blueprint(conn, project_id, content, prefix="",
                                                       self_id=self_id)


def _invalid(violations: list[errors.FieldViolation]) -> errors.InvalidArgument:
    summary = "; ".join(f"{v.field}: {v.description}" for v in violations[:3])
    more = f" (and {len(violations) - 3} more)" if len(violations) > 3 else ""
    return errors.InvalidArgument(
        f"the blueprint is not valid ({len(violations)} violations): {summary}{more}",
        violations, reason="INVALID_BLUEPRINT")
