"""The `file_sd` handler: a Prometheus `file_sd_configs` target file from the members."""

from ._handler import FileSDHandler

__all__ = ["FileSDHandler"]
