"""``python -m aegis_ckpt`` is the same as the ``aegis-ckpt`` command."""

import sys

from .cli import main

sys.exit(main())
