"""``python -m pruning_hf.cli ...`` runs the ``pruning-hf`` command."""

import sys

from . import main

sys.exit(main())
