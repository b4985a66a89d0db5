"""Identity rows ⇄ iceos.auth.v1 messages."""

from __future__ import annotations

from datetime import timezone
from typing import Any

from iceos.auth.v1 import auth_pb2

from services.common.convert import timestamp
from services.common.principal import Principal, Role

from .api_tokens import NewToken


def token(row: dict[str, Any], secret: str = "") -> auth_pb2.Token:
    return auth_pb2.Token(
        name=f"projects/{row['project_id']}/tokens/{row['id']}",
        display_name=row["display_name"], role=int(Role.parse(row["role"])),
        creator=row["creator"], create_time=timestamp(row["create_time"]),
        expire_time=timestamp(row["expire_time"]),
        last_use_time=timestamp(row["last_use_time"]),
        revoke_time=timestamp(row["revoke_time"]), secret=secret, prefix=row["prefix"])


def new_token(message: auth_pb2.Token) -> NewToken:
    return NewToken(display_name=message.display_name, role=int(message.role),
                    expire_time=message.expire_time.ToDatetime(tzinfo=timezone.utc)
                    if message.HasField("expire_time") else None)


def project(row: dict[str, Any]) -> auth_pb2.Project:
    return auth_pb2.Project(name=f"projects/{row['id']}",
                            organization=f"organizations/{row['organization_id']}",
                            display_name=row["display_name"],
                            create_time=timestamp(row["create_time"]))


def organization(row: dict[str, Any]) -> auth_pb2.Organization:
    return auth_pb2.Organization(name=f"organizations/{row['id']}",
                                 display_name=row["display_name"],
                                 create_time=timestamp(row["create_time"]))


def principal(who: Principal) -> auth_pb2.Principal:
    return auth_pb2.Principal(
        organization=f"organizations/{who.organization_id}",
        project=f"projects/{who.project_id}" if who.project_id else "",
        role=int(who.role), token=who.token_name, display_name=who.display_name)
