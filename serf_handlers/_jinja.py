"""Render a Jinja2 template: an operator's own (the haproxy and template handlers' `template`
and `source` options).

Jinja2 is imported here, and only when such a template must really be rendered: importing
it costs more than starting Python, and Serf starts a process per event.

The environment: no autoescaping (this is not HTML), `StrictUndefined` (a misspelt
variable is an error, not an empty string), `keep_trailing_newline`, and `trim_blocks` +
`lstrip_blocks` so that `{% for %}` lines leave no blank lines or indentation behind.
"""

from __future__ import annotations

import os

from ._typing import TYPE_CHECKING
from .errors import HandlerError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

_environments: dict[str, Any] = {}


class TemplateError(HandlerError):
    """The template could not be loaded or rendered; the message names it and the line."""


def render(template: str, context: Mapping[str, object]) -> str:
    import jinja2

    directory, name = os.path.split(os.path.abspath(template))
    env = _environments.get(directory)
    if env is None:
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(directory),
            autoescape=False,
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        _environments[directory] = env
    try:
        text: str = env.get_template(name).render(context)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template {exc.filename or template} line {exc.lineno}: {exc.message}") from None
    except jinja2.TemplateNotFound as exc:
        raise TemplateError(f"template {template}: not found ({exc})") from None
    except jinja2.TemplateError as exc:
        raise TemplateError(f"template {template}: {type(exc).__name__}: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"template {template}: cannot read it: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - operator-written template code can fail in any way
        raise TemplateError(f"template {template}: {type(exc).__name__}: {exc}") from None
    return text
