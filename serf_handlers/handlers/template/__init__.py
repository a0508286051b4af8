"""The `template` handler: any file rendered from the members (the consul-template of Serf)."""

from ._handler import TemplateHandler

__all__ = ["TemplateHandler"]
