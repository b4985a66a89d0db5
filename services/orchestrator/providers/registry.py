"""Which provider serves a model string."""

from __future__ import annotations

import os
import re

from .base import Provider
from .deterministic import DeterministicProvider
from .openai_compat import OpenAICompatibleProvider

_PROVIDER = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_DETERMINISTIC = DeterministicProvider()


def resolve(model: str, env: dict[str, str] | None = None) -> tuple[Provider, str] | None:
    """(provider, model name) for `deterministic`, `deterministic/<anything>` or
    `{provider}/{model}` with ICEOS_LLM_<PROVIDER>_BASE_URL (or, for `openai`, an API key) set;
    None when no provider is configured for it."""
    if model == "deterministic":
        return _DETERMINISTIC, "deterministic"
    provider, _, name = model.partition("/")
    if not name or not _PROVIDER.match(provider):
        return None
    if provider == "deterministic":
        return _DETERMINISTIC, name
    env = os.environ if env is None else env
    key = provider.upper().replace("-", "_")
    base_url = env.get(f"ICEOS_LLM_{key}_BASE_URL", "")
    api_key = env.get(f"ICEOS_LLM_{key}_API_KEY", "")
    if not base_url and provider == "openai" and api_key:
        base_url = "https://api.openai.com/v1"
    if not base_url:
        return None
    return OpenAICompatibleProvider(provider, base_url, api_key), name
