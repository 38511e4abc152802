"""Shared small collections: a micro model, a shapes-world manifest, its embeddings and index."""

from __future__ import annotations

import pytest
import torch

from clipforge.cli.main import main
from tests.conftest import MICRO_ARGS

pytest.importorskip("faiss")


def micro_model(path, seed: int):
    from clipforge.models import create_model, save_checkpoint

    torch.manual_seed(seed)
    save_checkpoint(create_model("tiny", dict(MICRO_ARGS)), path, "clipforge")
    return path


@pytest.fixture(scope="session")
def collection(tmp_path_factory):
    """``(root, model, other_model, data, emb, index)``: 96 shapes scenes embedded and indexed
    with a random micro model; ``other_model`` has other weights."""
    from clipforge.data.shapes import ShapesWorld
    from clipforge.data.writers import write_manifest

    root = tmp_path_factory.mktemp("collection")
    model = micro_model(root / "micro.pt", 0)
    other = micro_model(root / "other.pt", 1)
    world = ShapesWorld(32, split="train", seed=0)
    data = root / "data"
    write_manifest((world.sample(i) for i in range(96)), data)
    emb, index = root / "emb", root / "index"
    args = ["--progress", "false", "--threads", "1", "--shard-size", "32"]
    assert main(["embed", str(model), str(data), "--out", str(emb), *args]) == 0
    assert main(["index", str(emb), "--out", str(index)]) == 0
    return root, model, other, data, emb, index
