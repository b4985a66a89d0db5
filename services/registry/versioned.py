"""The life of a versioned registry resource, shared by blueprints and components.

Create (idempotent by request_id; reviving a deleted id continues its version numbers), Get,
List (filter + tamper-checked keyset page tokens), Update (field mask + etag: each accepted
change is a new immutable version; a stale etag is ABORTED), Delete (etag; soft: versions stay
readable for the runs that pinned them), ListVersions and GetVersion.

Validation runs before the write transaction, so no row lock is held while references load;
the transaction then re-checks that the head did not move meanwhile.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message

from services.common import errors, names, pagination
from services.common.db import Database
from services.common.principal import current

from . import filters, store

MAX_REQUEST_ID_CHARS = 128
_UPDATE_RETRIES = 3


@dataclass(frozen=True)
class Prepared:
    """What to store for one version: the content (as protobuf JSON for readers of the table,
    and binary for fast decoding) and the head's columns."""

    spec: dict[str, Any]
    message: bytes
    fields: dict[str, Any]


@dataclass
class Page:
    items: list[Any]
    next_page_token: str


class Versioned(ABC):
    table: store.Table
    collection: str          # "blueprints"
    singular: str            # "blueprint"
    filter_fields: dict[str, str]
    # Top-level fields an update mask may name.
    writable: tuple[str, ...]
    output_only: tuple[str, ...]

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- what each collection says ----------------------------------------------------------

    @abstractmethod
    async def prepare(self, conn: psycopg.AsyncConnection, project_id: str, resource_id: str,
                      content: Any, *, prefix: str) -> Prepared:
        """Validate new content (raise InvalidArgument with every violation) and say what to
        store."""

    @abstractmethod
    def to_proto(self, row: dict[str, Any]) -> Any: ...

    @abstractmethod
    def version_proto(self, row: dict[str, Any]) -> Any: ...

    @abstractmethod
    def check_change(self, old: Any, new: Any) -> None:
        """Refuse changes an update may not make (e.g. a component's kind)."""

    # -- names ------------------------------------------------------------------------------

    def pattern(self) -> str:
        return f"projects/{{project}}/{self.collection}/{{id}}"

    def parse_name(self, name: str, field: str = "name") -> tuple[str, str]:
        ids = names.parse(name, self.pattern(), field=field)
        return ids["project"], ids["id"]

    def not_found(self, project_id: str, resource_id: str) -> errors.NotFound:
        name = f"projects/{project_id}/{self.collection}/{resource_id}"
        return errors.NotFound(f"{self.singular} {name} not found",
                               reason=f"{self.singular.upper()}_NOT_FOUND",
                               metadata={"resource": name})

    # -- standard methods -------------------------------------------------------------------

    async def create(self, parent: str, resource_id: str, message: Any,
                     request_id: str) -> Any:
        project_id = names.project_of(parent)
        violations = errors.Violations()
        if not names.RESOURCE_ID.match(resource_id or ""):
            violations.add(f"{self.singular}_id", _id_problem(resource_id), "BAD_ID")
        if len(request_id) > MAX_REQUEST_ID_CHARS:
            violations.add("request_id", f"is longer than {MAX_REQUEST_ID_CHARS} characters",
                           "TOO_LONG")
        violations.raise_if_any()
        if request_id:
            async with self.db.connection() as conn:
                first = await store.find_by_request(conn, self.table, project_id, request_id)
            if first is not None:
                return self.to_proto(first)
        content = _content(message, self.output_only)
        async with self.db.connection() as conn:
            prepared = await self.prepare(conn, project_id, resource_id, content,
                                          prefix=self.singular)
            try:
                async with conn.transaction():
                    head = await store.insert_head(conn, self.table, project_id, resource_id,
                                                   prepared.fields)
                    if head is None:
                        raise errors.AlreadyExists(
                            f"{self.singular} projects/{project_id}/{self.collection}/"
                            f"{resource_id} already exists; choose another id or update it",
                            reason=f"{self.singular.upper()}_EXISTS")
                    version = int(head["latest_version"])
                    await self._append(conn, project_id, resource_id, version, prepared,
                                       request_id or None)
            except (psycopg.errors.UniqueViolation, errors.AlreadyExists):
                # A concurrent retry of the same request won the race: answer with its result.
                if request_id:
                    first = await store.find_by_request(conn, self.table, project_id,
                                                        request_id)
                    if first is not None:
                        return self.to_proto(first)
                raise
            row = await store.get_latest(conn, self.table, project_id, resource_id)
        assert row is not None
        return self.to_proto(row)

    async def _append(self, conn: psycopg.AsyncConnection, project_id: str, resource_id: str,
                      version: int, prepared: Prepared, request_id: str | None) -> None:
        from .convert import etag_for

        await store.append_version(
            conn, self.table, project_id, resource_id, version, prepared.spec,
            prepared.message, current().token_name, request_id, prepared.fields,
            lambda created: etag_for(project_id, resource_id, version, created))

    async def get(self, name: str) -> Any:
        project_id, resource_id = self.parse_name(name)
        async with self.db.connection() as conn:
            row = await store.get_latest(conn, self.table, project_id, resource_id)
        if row is None:
            raise self.not_found(project_id, resource_id)
        return self.to_proto(row)

    async def list(self, parent: str, page_size: int, page_token: str,
                   filter_text: str) -> Page:
        project_id = names.project_of(parent)
        size = pagination.page_size(page_size)
        conditions = filters.parse(filter_text, self.filter_fields)
        scope = pagination.scope_for(self.collection, parent, filter_text)
        after = pagination.decode(page_token, scope=scope)["after"] if page_token else None
        async with self.db.connection() as conn:
            rows = await store.list_latest(conn, self.table, project_id, conditions, after,
                                           size + 1)
        return self._page(rows, size, scope)

    def _page(self, rows: list[dict[str, Any]], size: int, scope: str) -> Page:
        more = len(rows) > size
        rows = rows[:size]
        token = ""
        if more and rows:
            last = rows[-1]
            key = [last["id"]] if self.table.order == "id" else \
                [last["create_time"].isoformat(), last["id"]]
            token = pagination.encode({"after": key}, scope=scope)
        return Page([self.to_proto(r) for r in rows], token)

    async def update(self, message: Any, mask: field_mask_pb2.FieldMask) -> Any:
        name = message.name
        if not name:
            raise errors.InvalidArgument.field(f"{self.singular}.name",
                                               f"is required: the {self.singular} to change",
                                               "REQUIRED")
        project_id, resource_id = self.parse_name(name, field=f"{self.singular}.name")
        paths = _mask_paths(mask, message.DESCRIPTOR, self.writable)
        for _attempt in range(_UPDATE_RETRIES):
            async with self.db.connection() as conn:
                row = await store.get_latest(conn, self.table, project_id, resource_id)
                if row is None:
                    raise self.not_found(project_id, resource_id)
                if message.etag and message.etag != row["etag"]:
                    raise _stale(self.singular, name)
                old = _content(self.to_proto(row), self.output_only)
                new = _merge(old, _content(message, self.output_only), paths, self.writable)
                if new == old:
                    return self.to_proto(row)  # nothing changed: no new version
                self.check_change(old, new)
                prepared = await self.prepare(conn, project_id, resource_id, new,
                                              prefix=self.singular)
                async with conn.transaction():
                    head = await store.lock_head(conn, self.table, project_id, resource_id)
                    if head is None:
                        raise self.not_found(project_id, resource_id)
                    if head["etag"] != row["etag"]:
                        if message.etag:
                            raise _stale(self.singular, name)
                        continue  # changed while we validated: merge onto the new head
                    await self._append(conn, project_id, resource_id,
                                       int(head["latest_version"]) + 1, prepared, None)
                row = await store.get_latest(conn, self.table, project_id, resource_id)
                assert row is not None
                return self.to_proto(row)
        raise errors.Aborted(f"{name} kept changing while this update was applied; retry",
                             reason="CONCURRENT_UPDATE")

    async def delete(self, name: str, etag: str) -> None:
        project_id, resource_id = self.parse_name(name)
        async with self.db.transaction() as conn:
            head = await store.lock_head(conn, self.table, project_id, resource_id)
            if head is None:
                raise self.not_found(project_id, resource_id)
            if etag and etag != head["etag"]:
                raise _stale(self.singular, name)
            await store.soft_delete(conn, self.table, project_id, resource_id)

    async def list_versions(self, parent: str, page_size: int, page_token: str) -> Page:
        project_id, resource_id = self.parse_name(parent, field="parent")
        size = pagination.page_size(page_size)
        scope = pagination.scope_for(f"{self.collection}-versions", parent)
        before = pagination.decode(page_token, scope=scope)["before"] if page_token else None
        async with self.db.connection() as conn:
            rows = await store.list_versions(conn, self.table, project_id, resource_id,
                                             int(before) if before else None, size + 1)
        if rows is None:
            raise self.not_found(project_id, resource_id)
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            token = pagination.encode({"before": int(rows[-1]["version"])}, scope=scope)
        return Page([self.version_proto(r) for r in rows], token)

    async def get_version(self, name: str) -> Any:
        ids = names.parse(name, self.pattern() + "/versions/{version}")
        project_id, resource_id = ids["project"], ids["id"]
        if not ids["version"].isdigit() or int(ids["version"]) < 1:
            raise errors.InvalidArgument.field("name", f"version {ids['version']!r} is not a "
                                                       "version number (1, 2, …)", "BAD_NAME")
        async with self.db.connection() as conn:
            row = await store.get_version(conn, self.table, project_id, resource_id,
                                          int(ids["version"]))
        if row is None:
            raise errors.NotFound(f"{name} not found", reason="VERSION_NOT_FOUND",
                                  metadata={"resource": name})
        return self.version_proto(row)


def _id_problem(value: str) -> str:
    if not value:
        return "is required"
    if len(value) > 63:
        return f"is {len(value)} characters; the limit is 63"
    return (f"{value!r} is not a valid id: use lower-case letters, digits, '-' or '_', "
            "starting with a letter, at most 63 characters")


def _stale(singular: str, name: str) -> errors.Aborted:
    return errors.Aborted(f"the etag does not match the current {singular} {name}: it changed "
                          "since you read it; get it again, reapply your change and retry",
                          metadata={"resource": name})


def _content(message: Any, output_only: Sequence[str]) -> Any:
    copy = type(message)()
    copy.CopyFrom(message)
    for name in output_only:
        copy.ClearField(name)
    return copy


def _mask_paths(mask: field_mask_pb2.FieldMask, descriptor: Any,
                writable: Sequence[str]) -> list[str] | None:
    """The mask's paths (None: replace every writable field), or INVALID_ARGUMENT."""
    paths = list(mask.paths)
    if not paths or paths == ["*"]:
        return None
    violations = errors.Violations()
    for index, path in enumerate(paths):
        check = field_mask_pb2.FieldMask(paths=[path])
        if path == "*" or not check.IsValidForDescriptor(descriptor):
            violations.add(f"update_mask.paths[{index}]", f"{path!r} is not a field of "
                           f"{descriptor.name}; use one of {', '.join(writable)} or '*'",
                           "BAD_MASK")
        elif path.split(".")[0] not in writable:
            violations.add(f"update_mask.paths[{index}]", f"{path!r} cannot be changed "
                           f"(writable: {', '.join(writable)})", "BAD_MASK")
    violations.raise_if_any("the update mask is not valid")
    return paths


def _merge(old: Message, patch: Message, paths: list[str] | None,
           writable: Sequence[str]) -> Message:
    new = type(old)()
    new.CopyFrom(old)
    if paths is None:
        for name in writable:
            new.ClearField(name)
        for fd, value in patch.ListFields():
            if fd.name in writable:
                if fd.message_type is not None and not fd.is_repeated:
                    getattr(new, fd.name).CopyFrom(value)
                elif fd.is_repeated:
                    getattr(new, fd.name).extend(value)
                else:
                    setattr(new, fd.name, value)
        return new
    field_mask_pb2.FieldMask(paths=paths).MergeMessage(
        patch, new, replace_message_field=True, replace_repeated_field=True)
    return new
