"""``python -m spai_cli`` = the ``spai`` command."""

import sys

from spai_cli import main

sys.exit(main())
