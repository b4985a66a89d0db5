"""Text embeddings behind one interface. The default embedder is local, deterministic and needs
no key: feature hashing of word unigrams, word bigrams, character trigrams and *concepts* into a
fixed-width vector, L2-normalised so cosine distance ranks by shared features.

Concepts are a small, general vocabulary of software-task synonyms ("fetch", "download" and
"retrieve" share one feature; so do "web", "page", "URL" and "HTTP"), so that a query and a
description that say the same thing in different words still meet. It is a list of word groups,
not of answers: it applies to any text. Model-backed embedders plug in behind `Embedder`.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Protocol

DIMENSIONS = 256  # must match the vector(256) columns in migrations/

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset("a an the of to for and or in on with by from at is are be it this that as "
                  "into using via all some any how what when which who my our your their its "
                  "do does can could should would will me we you there here out up about".split())

# Groups of words (after stemming) that mean the same task or thing.
CONCEPTS: dict[str, tuple[str, ...]] = {
    "web": ("web", "page", "site", "website", "url", "link", "http", "https", "internet",
            "online", "html", "browser", "endpoint", "api", "rest", "webpage"),
    "fetch": ("fetch", "download", "retrieve", "get", "request", "call", "load", "scrape",
              "crawl", "grab", "visit", "open"),
    "send": ("send", "post", "notify", "notification", "alert", "publish", "broadcast",
             "ping", "announce", "message"),
    "chat": ("chat", "slack", "team", "channel", "discord", "im"),
    "split": ("split", "chunk", "piece", "divide", "segment", "break", "partition", "smaller",
              "cut", "slice"),
    "document": ("document", "text", "article", "passage", "content", "string", "prose",
                 "paragraph", "sentence"),
    "extract": ("extract", "find", "match", "capture", "locate", "regex", "regexp", "pattern",
                "occurrence", "pull", "scan"),
    "email": ("email", "mail", "inbox", "address"),
    "validate": ("validate", "validation", "check", "verify", "conform", "valid", "schema",
                 "ensure", "compliant"),
    "json": ("json", "object", "data", "field", "structure", "payload", "record", "key"),
    "template": ("template", "fill", "format", "render", "compose", "placeholder", "variable",
                 "interpolate", "jinja"),
    "transform": ("transform", "reshape", "convert", "map", "pick", "select", "filter",
                  "compute", "restructure", "reformat"),
    "count": ("count", "number", "many", "tally", "total", "sum", "tot"),
    "money": ("invoice", "bill", "payment", "amount", "cost", "price", "due", "pay", "much",
              "owe", "vendor"),
    "support": ("support", "customer", "ticket", "help", "complaint", "reply", "answer",
                "respond", "helpdesk"),
    "summarize": ("summarize", "summarise", "summary", "digest", "condense", "shorten",
                  "tldr", "brief"),
    "report": ("report", "dashboard", "sales", "metric", "kpi", "analytic"),
    "classify": ("classify", "categorize", "categorise", "label", "triage", "urgency",
                 "priority", "sentiment", "tag"),
    "translate": ("translate", "translation", "language", "english", "french", "spanish"),
    "database": ("database", "sql", "query", "table", "postgres", "row"),
    "file": ("file", "pdf", "csv", "spreadsheet", "excel", "upload", "attachment"),
}
_CONCEPT_OF = {word: concept for concept, words in CONCEPTS.items() for word in words}


class Embedder(Protocol):
    name: str
    dimensions: int

    def embed(self, text: str) -> list[float]: ...


def _stem(word: str) -> str:
    for suffix in ("ing", "ies", "es", "ed", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


class HashingEmbedder:
    name = "hashing-v2"
    dimensions = DIMENSIONS

    def _features(self, text: str) -> list[tuple[str, float]]:
        words = [_stem(w) for w in _WORD.findall(text.lower())
                 if w not in _STOP and len(w) > 1]
        feats: list[tuple[str, float]] = [(f"w:{w}", 1.0) for w in words]
        feats += [(f"b:{a}_{b}", 0.5) for a, b in zip(words, words[1:])]
        for word in words:
            concept = _CONCEPT_OF.get(word)
            if concept is not None:
                feats.append((f"k:{concept}", 1.0))
            padded = f"^{word}$"
            feats += [(f"c:{padded[i:i + 3]}", 0.15) for i in range(len(padded) - 2)]
        return feats

    def embed(self, text: str) -> list[float]:
        vector = [0.0] * self.dimensions
        for feature, weight in self._features(text):
            digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
            index = int.from_bytes(digest[:4], "little") % self.dimensions
            sign = 1.0 if digest[4] & 1 else -1.0
            vector[index] += sign * weight
        norm = math.sqrt(sum(v * v for v in vector))
        if norm == 0:
            return vector
        return [v / norm for v in vector]


DEFAULT_EMBEDDER: Embedder = HashingEmbedder()
