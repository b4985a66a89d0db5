"""Model providers behind one interface (base.Provider). `deterministic` needs no key and gives
the same answer for the same conversation; `{provider}/{model}` reaches any endpoint that speaks
the OpenAI chat-completions protocol (configured by ICEOS_LLM_<PROVIDER>_BASE_URL and
ICEOS_LLM_<PROVIDER>_API_KEY). Real vendors with other protocols are added as new Provider
classes and one line in `resolve`."""

from __future__ import annotations

from .base import (ChatRequest, ChatResponse, Message, Provider, ProviderError, ToolCall,
                   ToolSpec, Usage)
from .registry import resolve

__all__ = ["ChatRequest", "ChatResponse", "Message", "Provider", "ProviderError", "ToolCall",
           "ToolSpec", "Usage", "resolve"]
