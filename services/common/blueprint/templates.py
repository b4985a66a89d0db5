"""Text templates (prompts, string arguments): Jinja2 in a sandboxed environment with
StrictUndefined, so a typo is an error instead of an empty string, and templates cannot reach
Python internals. Templates see the same names as CEL expressions."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_TEMPLATE_CHARS = 64 * 1024
MAX_RENDERED_CHARS = 1024 * 1024

_ENV = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False,
                                     keep_trailing_newline=True)


class TemplateError(ValueError):
    """The template does not parse, or failed while rendering. `message` is for users."""


@dataclass(frozen=True)
class Template:
    source: str
    template: jinja2.Template
    variables: frozenset[str]
    node_refs: frozenset[str]

    def render(self, context: dict[str, Any]) -> str:
        try:
            text = self.template.render(context)
        except jinja2.UndefinedError as exc:
            raise TemplateError(f"undefined in template: {exc.message}") from None
        except jinja2.exceptions.SecurityError as exc:
            raise TemplateError(f"not allowed in a template: {exc}") from None
        except Exception as exc:  # user-level errors inside the template (1/0, bad filters)
            raise TemplateError(f"template failed: {exc.__class__.__name__}: {exc}") from None
        if len(text) > MAX_RENDERED_CHARS:
            raise TemplateError(f"the rendered text is longer than {MAX_RENDERED_CHARS} "
                                "characters")
        return text


def _node_refs(tree: nodes.Template) -> frozenset[str]:
    refs = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        target = node.node
        if isinstance(target, nodes.Name) and target.name == "nodes":
            if isinstance(node, nodes.Getattr):
                refs.add(node.attr)
            elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                refs.add(node.arg.value)
    return frozenset(refs)


def is_template(text: str) -> bool:
    return "{{" in text or "{%" in text or "{#" in text


def has_template(value: Any) -> bool:
    """Whether any string inside a JSON value is a template (so it must be rendered per run)."""
    if isinstance(value, str):
        return is_template(value)
    if isinstance(value, dict):
        return any(has_template(v) for v in value.values())
    if isinstance(value, list):
        return any(has_template(v) for v in value)
    return False


@lru_cache(maxsize=4096)
def compile_template(source: str) -> Template:
    if len(source) > MAX_TEMPLATE_CHARS:
        raise TemplateError(f"the template is longer than {MAX_TEMPLATE_CHARS} characters")
    try:
        tree = _ENV.parse(source)
        template = _ENV.from_string(tree)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"line {exc.lineno}: {exc.message}") from None
    return Template(source=source, template=template,
                    variables=frozenset(meta.find_undeclared_variables(tree)),
                    node_refs=_node_refs(tree))


def render(source: str, context: dict[str, Any]) -> str:
    if not is_template(source):
        return source
    return compile_template(source).render(context)


def render_value(value: Any, context: dict[str, Any]) -> Any:
    """Render every string inside a JSON value (tool args, code inputs) as a template."""
    if isinstance(value, str):
        return render(value, context)
    if isinstance(value, dict):
        return {k: render_value(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render_value(v, context) for v in value]
    return value
