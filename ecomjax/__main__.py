"""``python -m ecomjax ...`` is the ``ecomjax`` command."""

import sys

from ecomjax.cli import main

sys.exit(main())
