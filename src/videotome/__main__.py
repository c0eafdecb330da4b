"""``python -m videotome``: the command line, also as a module for ``torchrun -m videotome``."""

import sys

from videotome.cli import main

sys.exit(main())
