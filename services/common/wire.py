"""Name the bad field of a request that protobuf cannot parse.

grpcio would answer such a request (a string field with invalid UTF-8, a message nested past
protobuf's recursion limit) with UNKNOWN "Unexpected DecodeError". The interceptor parses each
request itself and, on failure, asks `diagnose` for an INVALID_ARGUMENT whose field violation is
the path of the bad field (`blueprint.nodes[0].id`), found by walking the wire format against
the descriptor.
"""

from __future__ import annotations

from google.protobuf import descriptor

from . import errors

# Deeper than this is refused (protobuf's own parser stops at 100 levels).
MAX_MESSAGE_DEPTH = 90

class _Bad(Exception):
    def __init__(self, path: str, description: str, reason: str) -> None:
        super().__init__(description)
        self.path, self.description, self.reason = path, description, reason


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise _Bad("", "the request is truncated", "MALFORMED")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Bad("", "the request has a malformed varint", "MALFORMED")


def _walk(data: bytes, message: descriptor.Descriptor, path: str, depth: int) -> None:
    if depth > MAX_MESSAGE_DEPTH:
        raise _Bad(path, f"is nested more than {MAX_MESSAGE_DEPTH} messages deep",
                   "TOO_DEEP")
    counts: dict[int, int] = {}
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        number, wire_type = tag >> 3, tag & 7
        fd = message.fields_by_number.get(number)
        index = counts.get(number, 0)
        counts[number] = index + 1
        here = ""
        if fd is not None:
            name = f"{path}.{fd.name}" if path else fd.name
            here = f"{name}[{index}]" if fd.is_repeated else name
        if wire_type == 0:
            _, pos = _varint(data, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        elif wire_type == 2:
            length, pos = _varint(data, pos)
            chunk = data[pos:pos + length]
            if len(chunk) < length:
                raise _Bad(here, "the request is truncated", "MALFORMED")
            pos += length
            if fd is None:
                continue
            if fd.type == fd.TYPE_STRING:
                try:
                    chunk.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise _Bad(here, f"is not valid UTF-8 (byte {exc.start}); text fields "
                                     "must be UTF-8", "INVALID_UTF8") from None
            elif fd.type == fd.TYPE_MESSAGE:
                _walk(chunk, fd.message_type, here, depth + 1)
        elif wire_type in (3, 4):
            raise _Bad(here, "uses protobuf groups, which this API does not", "MALFORMED")
        else:
            raise _Bad(here, f"has an unknown wire type {wire_type}", "MALFORMED")


def diagnose(message: descriptor.Descriptor, data: bytes, error: Exception) -> \
        errors.InvalidArgument:
    """INVALID_ARGUMENT naming the field that made `data` unparsable as `message`."""
    try:
        _walk(data, message, "", 1)
    except _Bad as bad:
        return errors.InvalidArgument(
            f"{bad.path or 'request'}: {bad.description}",
            [errors.FieldViolation(bad.path, bad.description, bad.reason)])
    text = " ".join(str(error).split())[:300]
    return errors.InvalidArgument(f"the request is not a valid {message.name}: {text}",
                                  [errors.FieldViolation("", text, "MALFORMED")])
