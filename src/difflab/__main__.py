"""``python -m difflab ...`` is the ``difflab`` command; torchrun launches it as
``torchrun --nproc_per_node=N -m difflab train CONFIG``."""

import sys

from difflab.cli import main

if __name__ == "__main__":
    sys.exit(main())
