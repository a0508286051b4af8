"""The built-in haproxy.cfg template as a Jinja2 file, and the renderer of an operator's own
(`template`): the package's one Jinja2 environment (`serf_handlers._jinja`).

The built-in template is rendered by `_builtin` without Jinja2; its .j2 file is rendered
only in tests, to prove that both agree.
"""

from __future__ import annotations

import os

from ..._jinja import TemplateError, render

BUILTIN_TEMPLATE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "templates", "haproxy.cfg.j2"
)

__all__ = ["BUILTIN_TEMPLATE", "TemplateError", "render"]
