"""The ``aegis-ckpt`` command line: the parser and commands (``app``) and the read-only reports (``status``).

The entry point is ``aegis_ckpt.cli:main``.
"""

from .app import build_parser, main

__all__ = ["build_parser", "main"]
