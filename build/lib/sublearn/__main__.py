"""`python -m sublearn ...`: the CLI, in the form launchers take (`torchrun -m sublearn train ...`)."""

import sys

from sublearn.cli import main

sys.exit(main())
