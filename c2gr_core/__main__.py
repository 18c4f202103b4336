"""`python -m c2gr_core ...` (and `torchrun ... -m c2gr_core run ...`) is the `c2gr` command."""
import sys

from c2gr_core.interface.cli import main

sys.exit(main())
