"""``python -m clipforge.embed``: ``clipforge embed`` as a module, the entry point for torchrun.

    torchrun --nproc_per_node 4 -m clipforge.embed MODEL photos/ --out emb/

takes the arguments of ``clipforge embed``. Each process embeds every ``N``-th shard of
the run into the one folder, and the folder equals what one process writes (see
:mod:`clipforge.index.embedding`).
"""

import os
import sys

# Set before torch is imported, as the CLI does; a spinning OpenMP pool per process
# starves the other processes of a small machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from clipforge.cli.main import main  # noqa: E402

sys.exit(main(["embed", *sys.argv[1:]]))
