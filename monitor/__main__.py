"""`python -m monitor`: the same as the `wsmon` command."""

import sys

from .cli import main

sys.exit(main())
