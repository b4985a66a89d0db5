"""Text built-ins: `text_split` (chunk text on natural boundaries) and `regex_extract` (find
pattern matches with RE2, whose matching time is linear in the text: no pattern can hang the
orchestrator with catastrophic backtracking)."""

from __future__ import annotations

from typing import Any

import re2

from .catalog import BuiltinTool, ToolContext, ToolError, register

MAX_TEXT_CHARS = 2 * 1024 * 1024
MAX_PATTERN_CHARS = 2000
# Paragraphs, then lines, then sentences, then words, then characters.
SEPARATORS = ("\n\n", "\n", ". ", " ", "")


def _int(args: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = args.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            int(value) != value or not low <= value <= high:
        raise ToolError(f"{name} must be a whole number between {low} and {high}",
                        "BAD_ARGUMENT")
    return int(value)


def _text(args: dict[str, Any]) -> str:
    text = args.get("text")
    if not isinstance(text, str):
        raise ToolError("text is required and must be a string", "BAD_ARGUMENT")
    if len(text) > MAX_TEXT_CHARS:
        raise ToolError(f"text is longer than {MAX_TEXT_CHARS} characters", "BAD_ARGUMENT")
    return text


def split_text(text: str, max_chars: int, separators: tuple[str, ...] = SEPARATORS) -> list[str]:
    """Pieces of at most max_chars, cut at the coarsest boundary that fits."""
    if len(text) <= max_chars:
        return [text] if text.strip() else []
    separator, rest = separators[0], separators[1:]
    if separator == "":
        return [text[i:i + max_chars] for i in range(0, len(text), max_chars)]
    if separator not in text:
        return split_text(text, max_chars, rest)
    parts = text.split(separator)
    pieces = [p + separator for p in parts[:-1]] + [parts[-1]]
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        if len(piece) > max_chars:
            if current.strip():
                chunks.append(current)
            current = ""
            chunks.extend(split_text(piece, max_chars, rest))
        elif len(current) + len(piece) > max_chars:
            if current.strip():
                chunks.append(current)
            current = piece
        else:
            current += piece
    if current.strip():
        chunks.append(current)
    return chunks


async def text_split(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    text = _text(args)
    max_chars = _int(args, "max_chars", 1000, 1, 100_000)
    overlap = _int(args, "overlap", 0, 0, 10_000)
    if overlap >= max_chars:
        raise ToolError("overlap must be smaller than max_chars", "BAD_ARGUMENT")
    chunks = [c.strip() for c in split_text(text, max_chars - overlap)]
    # Each chunk after the first starts with the end of the one before (still <= max_chars).
    chunks = [c if i == 0 or not overlap else chunks[i - 1][-overlap:] + c
              for i, c in enumerate(chunks)]
    return {"chunks": chunks, "count": len(chunks)}


async def regex_extract(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    text = _text(args)
    pattern = args.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        raise ToolError("pattern is required", "BAD_ARGUMENT")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ToolError(f"pattern is longer than {MAX_PATTERN_CHARS} characters",
                        "BAD_ARGUMENT")
    limit = _int(args, "max_matches", 100, 1, 10_000)
    options = re2.Options()
    options.log_errors = False
    options.case_sensitive = not bool(args.get("ignore_case", False))
    options.dot_nl = bool(args.get("dot_all", False))
    try:
        compiled = re2.compile(pattern, options)
    except re2.error as exc:
        message = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) \
            else str(exc)
        raise ToolError(f"the pattern is not valid RE2 syntax: {message} (RE2 has no "
                        "backreferences or lookaround)", "BAD_PATTERN") from None
    matches = []
    for match in compiled.finditer(text):
        matches.append({"match": match.group(0), "groups": list(match.groups()),
                        "named": match.groupdict(), "start": match.start(), "end": match.end()})
        if len(matches) >= limit:
            break
    return {"matches": matches, "count": len(matches)}


register(BuiltinTool(
    name="text_split",
    display_name="Split text into chunks",
    description="Split a long text or document into chunks of at most max_chars characters, "
                "cutting at paragraph, line, sentence or word boundaries, with optional "
                "overlap: prepare text for embedding, summarising or an LLM context window.",
    input_schema={"type": "object", "required": ["text"], "additionalProperties": False,
                  "properties": {"text": {"type": "string"},
                                 "max_chars": {"type": "integer", "minimum": 1,
                                               "maximum": 100000},
                                 "overlap": {"type": "integer", "minimum": 0,
                                             "maximum": 10000}}},
    output_schema={"type": "object", "properties": {
        "chunks": {"type": "array", "items": {"type": "string"}}, "count": {"type": "integer"}}},
    run=text_split, tags=("text", "chunk")))

register(BuiltinTool(
    name="regex_extract",
    display_name="Regex extract",
    description="Extract or find every match of a regular expression pattern in a text: pull "
                "out emails, numbers, dates, ids or named groups. RE2 syntax, linear time.",
    input_schema={"type": "object", "required": ["text", "pattern"],
                  "additionalProperties": False,
                  "properties": {"text": {"type": "string"}, "pattern": {"type": "string"},
                                 "ignore_case": {"type": "boolean"},
                                 "dot_all": {"type": "boolean"},
                                 "max_matches": {"type": "integer", "minimum": 1,
                                                 "maximum": 10000}}},
    output_schema={"type": "object", "properties": {
        "matches": {"type": "array"}, "count": {"type": "integer"}}},
    run=regex_extract, tags=("text", "regex", "extract")))
