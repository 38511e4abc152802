import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

# One thread by default (the suite's processes share two cores); CLIPFORGE_TEST_THREADS=2
# reruns the numerics under another BLAS blocking to show the tolerances hold there too.
TEST_THREADS = int(os.environ.get("CLIPFORGE_TEST_THREADS", "1"))
torch.set_num_threads(TEST_THREADS)

# A model small enough that a training step takes milliseconds.
MICRO_ARGS = {
    "embed_dim": 32,
    "vision.image_size": 16,
    "vision.patch_size": 4,
    "vision.width": 32,
    "vision.layers": 1,
    "vision.heads": 2,
    "text.width": 32,
    "text.layers": 1,
    "text.heads": 2,
    "text.context_length": 24,
}
MICRO_ARGS_CLI = ",".join(f"{k}={v}" for k, v in MICRO_ARGS.items())


@pytest.fixture
def micro_args() -> dict:
    return dict(MICRO_ARGS)


@pytest.fixture
def micro_checkpoint(tmp_path):
    """A randomly initialised micro model saved as a clipforge checkpoint file."""
    from clipforge.models import create_model, save_checkpoint

    torch.manual_seed(123)
    path = tmp_path / "tower.pt"
    save_checkpoint(create_model("tiny", dict(MICRO_ARGS)), path, "clipforge")
    return path
