"""``python -m clipforge.train``: ``clipforge train`` as a module, the entry point for torchrun.

    torchrun --nproc_per_node 2 -m clipforge.train --batch-size 128 --out runs/ddp

takes the flags of ``clipforge train``; see :mod:`clipforge.train.distributed`.
"""

import os
import sys

# Set before torch is imported, as the CLI does; a spinning OpenMP pool per process
# starves the other processes of a small machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from clipforge.cli.main import main  # noqa: E402

sys.exit(main(["train", *sys.argv[1:]]))
