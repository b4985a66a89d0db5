"""Text embeddings behind one interface. The default embedder is local, deterministic and needs
no key: feature hashing of word unigrams, word bigrams and character trigrams into a
fixed-width vector, L2-normalised so cosine distance ranks by shared features."""

from __future__ import annotations

import hashlib
import math
import re
from typing import Protocol

DIMENSIONS = 256  # must match the vector(256) columns in migrations/

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset("a an the of to for and or in on with by from at is are be it this that as "
                  "into using via".split())


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
    name = "hashing-v1"
    dimensions = DIMENSIONS

    def _features(self, text: str) -> list[tuple[str, float]]:
        words = [_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOP]
        feats: list[tuple[str, float]] = [(f"w:{w}", 1.0) for w in words]
        feats += [(f"b:{a}_{b}", 0.7) for a, b in zip(words, words[1:])]
        for word in words:
            padded = f"^{word}$"
            feats += [(f"c:{padded[i:i + 3]}", 0.25) for i in range(len(padded) - 2)]
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
