"""Registry rows ⇄ protos: stored specs (protobuf JSON) back into Blueprint / Component messages
with their names, versions, etags and times."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from google.protobuf import json_format
from iceos.registry.v1 import blueprint_pb2, component_pb2, registry_pb2

from services.common.builtins import BuiltinTool
from services.common.convert import dict_to_struct, timestamp

# Fields the server sets; never stored in a spec, ignored when a client sends them.
OUTPUT_ONLY = ("name", "version", "etag", "create_time", "update_time")
COMPONENT_OUTPUT_ONLY = (*OUTPUT_ONLY, "kind", "builtin")

KIND_NAMES = {component_pb2.COMPONENT_KIND_TOOL: "tool",
              component_pb2.COMPONENT_KIND_AGENT: "agent",
              component_pb2.COMPONENT_KIND_CODE: "code",
              component_pb2.COMPONENT_KIND_WORKFLOW: "workflow"}
KIND_ENUMS = {v: k for k, v in KIND_NAMES.items()}


def etag_for(project_id: str, resource_id: str, version: int, created: datetime) -> str:
    """Etags name one version: they change with every accepted change, never repeat."""
    text = f"{project_id}/{resource_id}/{version}/{created.isoformat()}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def content_of(message: Any, output_only: tuple[str, ...] = OUTPUT_ONLY) -> Any:
    """A copy without the server-set fields: what a version stores."""
    copy = type(message)()
    copy.CopyFrom(message)
    for name in output_only:
        copy.ClearField(name)
    return copy


def spec_of(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message)


def _version_of(row: dict[str, Any]) -> int:
    return int(row.get("version") or row["latest_version"])


def blueprint(row: dict[str, Any]) -> blueprint_pb2.Blueprint:
    """A head row joined with one version's spec (latest, or the one in `row["version"]`)."""
    message = blueprint_pb2.Blueprint.FromString(row["message"])
    version = _version_of(row)
    message.name = f"projects/{row['project_id']}/blueprints/{row['id']}"
    message.version = version
    message.etag = etag_for(row["project_id"], row["id"], version, row["version_time"])
    message.create_time.CopyFrom(timestamp(row["create_time"]))
    message.update_time.CopyFrom(timestamp(row["version_time"]))
    return message


def blueprint_version(row: dict[str, Any]) -> registry_pb2.BlueprintVersion:
    message = blueprint(row)
    return registry_pb2.BlueprintVersion(
        name=f"{message.name}/versions/{message.version}", version=message.version,
        blueprint=message, create_time=timestamp(row["version_time"]), creator=row["creator"])


def component(row: dict[str, Any]) -> component_pb2.Component:
    message = component_pb2.Component.FromString(row["message"])
    version = _version_of(row)
    message.name = f"projects/{row['project_id']}/components/{row['id']}"
    message.kind = KIND_ENUMS[row["kind"]]
    message.version = version
    message.etag = etag_for(row["project_id"], row["id"], version, row["version_time"])
    message.create_time.CopyFrom(timestamp(row["create_time"]))
    message.update_time.CopyFrom(timestamp(row["version_time"]))
    return message


def component_version(row: dict[str, Any]) -> registry_pb2.ComponentVersion:
    message = component(row)
    return registry_pb2.ComponentVersion(
        name=f"{message.name}/versions/{message.version}", version=message.version,
        component=message, create_time=timestamp(row["version_time"]), creator=row["creator"])


def builtin_component(tool: BuiltinTool) -> component_pb2.Component:
    schemas = json.dumps([tool.input_schema, tool.output_schema], sort_keys=True)
    return component_pb2.Component(
        name=tool.resource_name, kind=component_pb2.COMPONENT_KIND_TOOL,
        display_name=tool.display_name, description=tool.description, tags=list(tool.tags),
        tool=component_pb2.ToolSpec(input_schema=dict_to_struct(tool.input_schema),
                                    output_schema=dict_to_struct(tool.output_schema),
                                    builtin=tool.name),
        version=1, etag=hashlib.sha256(f"{tool.name}/{schemas}".encode()).hexdigest()[:20],
        builtin=True)
