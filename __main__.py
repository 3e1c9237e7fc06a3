"""`python -m mfport`: the mfport command."""

import sys

from mfport.cli import main

sys.exit(main())
