"""Blueprints authored as YAML or JSON, loaded onto the proto through the protobuf JSON mapping.

Both spellings of a field work (`depends_on` and `dependsOn`). Mistakes are reported all at
once with their paths, like validation: an unknown field (`nodes[2].llm.promt`), an unknown node
kind (`nodes[0].lop`), two kinds on one node, a value of the wrong type. Loading checks the
shape only; `validate.validate_blueprint` checks the meaning.

    python -m services.common.blueprint.authoring examples/blueprints/*.yaml
    python -m services.common.blueprint.authoring --json examples/blueprints/hello.yaml

`--json FILE` checks one file the same way and prints its protobuf JSON on stdout (nothing when
it has problems: they go to stderr), ready to send to the JSON API with `curl -d @-`.
"""

from __future__ import annotations

import datetime
import json
import sys
from typing import Any

import yaml
from google.protobuf import descriptor, json_format, message_factory
from iceos.registry.v1 import blueprint_pb2

from services.common import errors

from . import graph

# Deeper documents than this are refused before parsing them onto the proto (the blueprint
# language allows 16 levels of nodes; each level is two or three JSON objects).
MAX_DOCUMENT_DEPTH = 64
MAX_DOCUMENT_BYTES = 8 * 1024 * 1024

_WELL_KNOWN = {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue",
               "google.protobuf.Duration", "google.protobuf.Timestamp",
               "google.protobuf.FieldMask"}


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (YAML would silently keep the last one)."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark)
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)  # type: ignore[no-untyped-call]


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_document(text: str | bytes, *, source: str = "blueprint") -> Any:
    """YAML (a superset of JSON) → Python data, or InvalidArgument saying where it broke."""
    if isinstance(text, bytes):
        if len(text) > MAX_DOCUMENT_BYTES:
            raise _error("", f"{source} is {len(text)} bytes; the limit is "
                             f"{MAX_DOCUMENT_BYTES}", "TOO_LARGE")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _error("", f"{source} is not valid UTF-8 (byte {exc.start})",
                         "INVALID_UTF8") from None
    if len(text) > MAX_DOCUMENT_BYTES:
        raise _error("", f"{source} is longer than {MAX_DOCUMENT_BYTES} characters",
                     "TOO_LARGE")
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise _error("", f"{source} is not valid YAML/JSON{where}: {exc.problem or exc}",
                     "SYNTAX") from None
    except yaml.YAMLError as exc:
        raise _error("", f"{source} is not valid YAML/JSON: {exc}", "SYNTAX") from None
    except RecursionError:
        raise _error("", f"{source} is nested too deeply", "TOO_DEEP") from None
    return data


def load_blueprint(text: str | bytes, *, source: str = "blueprint",
                   prefix: str = "") -> blueprint_pb2.Blueprint:
    """Parse YAML or JSON text into a Blueprint; InvalidArgument lists every shape mistake."""
    return blueprint_from_data(parse_document(text, source=source), prefix=prefix)


def blueprint_from_data(data: Any, *, prefix: str = "") -> blueprint_pb2.Blueprint:
    if data is None:
        raise _error(prefix, "the document is empty; a blueprint needs at least `nodes`",
                     "EMPTY")
    if not isinstance(data, dict):
        raise _error(prefix, f"a blueprint is a mapping (with `nodes`, `displayName`, …), not "
                             f"{_type_name(data)}", "WRONG_TYPE")
    problems = errors.Violations()
    data = _plain(data, problems, prefix, 0)
    if not problems:
        _check_message(data, blueprint_pb2.Blueprint.DESCRIPTOR, prefix, problems)
    problems.raise_if_any("the blueprint does not load")
    message = blueprint_pb2.Blueprint()
    try:
        json_format.ParseDict(data, message)
    except json_format.ParseError as exc:  # anything the walk above did not foresee
        raise _error(prefix, f"does not load: {exc}", "WRONG_TYPE") from None
    return message


def _error(path: str, description: str, reason: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(f"{path or 'blueprint'}: {description}",
                                  [errors.FieldViolation(path, description, reason)])


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _plain(value: Any, problems: errors.Violations, path: str, depth: int) -> Any:
    """YAML data → JSON data: dates become RFC 3339 strings, keys must be strings, depth is
    bounded."""
    if depth > MAX_DOCUMENT_DEPTH:
        problems.add(path, f"nested more than {MAX_DOCUMENT_DEPTH} levels deep", "TOO_DEEP")
        return None
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                problems.add(_join(path, str(key)), f"keys must be strings, not "
                                                    f"{_type_name(key)}", "WRONG_TYPE")
                continue
            out[key] = _plain(item, problems, _join(path, key), depth + 1)
        return out
    if isinstance(value, list):
        return [_plain(item, problems, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    if isinstance(value, datetime.datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def _fields(message: descriptor.Descriptor) -> dict[str, descriptor.FieldDescriptor]:
    by_name: dict[str, descriptor.FieldDescriptor] = {}
    for fd in message.fields:
        by_name[fd.name] = fd
        by_name[fd.json_name] = fd
    return by_name


def _check_message(data: Any, message: descriptor.Descriptor, path: str,
                   problems: errors.Violations) -> None:
    if not isinstance(data, dict):
        problems.add(path or message.name, f"must be a mapping ({message.name}), not "
                                           f"{_type_name(data)}", "WRONG_TYPE")
        return
    fields = _fields(message)
    is_node = message.full_name == blueprint_pb2.Node.DESCRIPTOR.full_name
    oneofs_seen: dict[str, str] = {}
    for key, value in data.items():
        fd = fields.get(key)
        # Paths use the proto field names, as validation does (`depends_on`, not `dependsOn`).
        here = _join(path, fd.name if fd is not None else key)
        if fd is None:
            if is_node:
                problems.add(here, f"unknown node kind or field {key!r}; a node has an id, "
                             f"depends_on, timeout, retry, on_error and exactly one kind: "
                             f"{', '.join(graph.NODE_KINDS)}", "UNKNOWN_NODE_KIND")
            else:
                known = ", ".join(sorted({f.json_name for f in message.fields}))
                problems.add(here, f"unknown field {key!r} in {message.name} (known: {known})",
                             "UNKNOWN_FIELD")
            continue
        if fd.containing_oneof is not None and value is not None:
            other = oneofs_seen.get(fd.containing_oneof.name)
            if other is not None:
                what = "kind" if is_node and fd.containing_oneof.name == "kind" else \
                    fd.containing_oneof.name
                problems.add(here, f"sets {fd.name!r} and {other!r}; set exactly one "
                                   f"{what}", "MULTIPLE_KINDS")
                continue
            oneofs_seen[fd.containing_oneof.name] = fd.name
        _check_field(value, fd, here, problems)


def _check_field(value: Any, fd: descriptor.FieldDescriptor, path: str,
                 problems: errors.Violations) -> None:
    if value is None:
        return
    if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
        if not isinstance(value, dict):
            problems.add(path, f"must be a mapping, not {_type_name(value)}", "WRONG_TYPE")
            return
        value_fd = fd.message_type.fields_by_name["value"]
        for key, item in value.items():
            _check_single(item, value_fd, f"{path}.{key}", problems)
        return
    if fd.is_repeated:
        if not isinstance(value, list):
            problems.add(path, f"must be a list, not {_type_name(value)}", "WRONG_TYPE")
            return
        for index, item in enumerate(value):
            _check_single(item, fd, f"{path}[{index}]", problems)
        return
    _check_single(value, fd, path, problems)


def _check_single(value: Any, fd: descriptor.FieldDescriptor, path: str,
                  problems: errors.Violations) -> None:
    if fd.message_type is not None and fd.message_type.full_name not in _WELL_KNOWN:
        _check_message(value, fd.message_type, path, problems)
        return
    # Scalars, enums and well-known types: let the protobuf JSON parser judge this one value
    # alone, in an otherwise empty message of the field's own type.
    if fd.containing_type is None or fd.containing_type.GetOptions().map_entry:
        return
    message = message_factory.GetMessageClass(fd.containing_type)()
    try:
        json_format.ParseDict({fd.json_name: [value] if fd.is_repeated else value}, message)
    except json_format.ParseError as exc:
        text = " ".join(str(exc).split())[:300]
        if fd.enum_type is not None:
            names = ", ".join(v.name for v in fd.enum_type.values)
            text = f"{value!r} is not one of {names}"
        elif fd.message_type is not None and \
                fd.message_type.full_name == "google.protobuf.Duration":
            text = f"{value!r} is not a duration; write seconds with an s suffix, e.g. \"30s\""
        problems.add(path, f"has the wrong type: {text}", "WRONG_TYPE")


def blueprint_to_yaml(blueprint: blueprint_pb2.Blueprint) -> str:
    """The blueprint as YAML (protobuf JSON names), e.g. to show a stored version."""
    data = json_format.MessageToDict(blueprint)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def main(argv: list[str]) -> int:
    """Load and validate files offline (built-ins are known; project components are not).
    With `--json FILE`, print the file's protobuf JSON instead of a status line."""
    from services.common import builtins

    from .validate import ComponentInfo, validate_blueprint

    def lookup(ref: str) -> ComponentInfo | None:
        tool = builtins.get(ref) if ref.startswith("builtins/") else None
        return ComponentInfo(tool.resource_name, "tool", tool.input_schema, 1) if tool else None

    as_json = argv[:1] == ["--json"]
    names = argv[1:] if as_json else argv
    if not names or (as_json and len(names) != 1) or any(n.startswith("--") for n in names):
        print("usage: python -m services.common.blueprint.authoring FILE...\n"
              "       python -m services.common.blueprint.authoring --json FILE",
              file=sys.stderr)
        return 2
    # Problems go to stderr when stdout carries the JSON, so a pipe never sends half a result.
    report = sys.stderr if as_json else sys.stdout
    status = 0
    for name in names:
        try:
            with open(name, "rb") as handle:
                spec = load_blueprint(handle.read(), source=name)
        except OSError as exc:
            status = 1
            print(f"{name}: cannot read: {exc.strerror}", file=report)
            continue
        except errors.InvalidArgument as exc:
            status = 1
            for v in exc.violations:
                print(f"{name}: {v.field or '(document)'}: {v.description} [{v.reason}]",
                      file=report)
            continue
        violations = [v for v in validate_blueprint(spec, lookup=lookup)
                      if v.reason != "UNKNOWN_COMPONENT" or "builtins/" in v.description]
        for v in violations:
            print(f"{name}: {v.field}: {v.description} [{v.reason}]", file=report)
        if violations:
            status = 1
        elif as_json:
            print(json.dumps(json_format.MessageToDict(spec), ensure_ascii=False))
        else:
            print(f"{name}: ok ({sum(1 for _ in graph.walk(spec.nodes))} nodes)")
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))


__all__ = ["blueprint_from_data", "blueprint_to_yaml", "load_blueprint", "parse_document"]
