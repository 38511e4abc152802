"""clipforge's zero-shot and retrieval numbers equal CLIP_benchmark's on the same tensors.

CLIP_benchmark (``clip-benchmark`` in the ``[dev]`` extra) is called through its own
``evaluate`` functions with a stand-in model whose encoders return fixed embeddings, so
its whole metric path (normalisation, logits, topk, balanced accuracy, recall@k over
batches) runs on exactly the tensors clipforge scores. The embeddings have entries in
{0, +-1/2} with four non-zeros: unit norm exactly, dot products exact in float32, and
many tied scores, which is where implementations usually disagree.
"""

import builtins

import numpy as np
import pytest
import torch

from clipforge.eval.retrieval import retrieval
from clipforge.eval.zeroshot import classification_metrics
from tests.tolerance import count_mean_bound, reorder_bound

cb_zs = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
cb_ret = pytest.importorskip("clip_benchmark.metrics.zeroshot_retrieval")


def _float(x):
    # CLIP_benchmark 1.6.2 calls float() on a one-element 1-D array, which numpy >= 2.4
    # refuses; this stand-in for the builtin, visible to its module only, takes the element.
    return builtins.float(x.reshape(-1)[0]) if isinstance(x, np.ndarray) else builtins.float(x)


@pytest.fixture(autouse=True)
def _numpy2_shim(monkeypatch):
    monkeypatch.setattr(cb_zs, "float", _float, raising=False)


def tie_heavy(n: int, dim: int, g: torch.Generator) -> torch.Tensor:
    x = torch.zeros(n, dim)
    for i in range(n):
        idx = torch.randperm(dim, generator=g)[:4]
        x[i, idx] = 0.5 * (torch.randint(0, 2, (4,), generator=g).float() * 2 - 1)
    return x


class FixedEncoders(torch.nn.Module):
    """Inputs are row indices into fixed image and text embeddings."""

    def __init__(self, images: torch.Tensor, texts: torch.Tensor | None = None) -> None:
        super().__init__()
        self.images, self.texts = images, texts

    def encode_image(self, idx: torch.Tensor) -> torch.Tensor:
        return self.images[idx]

    def encode_text(self, idx: torch.Tensor) -> torch.Tensor:
        return self.texts[idx]


class _Loader(list):
    """A list of batches that also has the ``.dataset.classes`` CLIP_benchmark reads."""

    class _DS:
        def __init__(self, classes: list[str]) -> None:
            self.classes = classes

    def __init__(self, batches: list, classes: list[str]) -> None:
        super().__init__(batches)
        self.dataset = self._DS(classes)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("num_classes", [3, 12])
def test_zeroshot_equals_clip_benchmark(tmp_path, seed, num_classes):
    g = torch.Generator().manual_seed(seed)
    feats = tie_heavy(90, 8, g)
    weights = tie_heavy(num_classes, 8, g)
    weights[1] = weights[0]  # two classes with one embedding: every image ties on them
    labels = torch.randint(0, num_classes, (90,), generator=g)
    labels[:3] = torch.tensor([0, 1, 2])
    clf = tmp_path / "clf.pt"
    torch.save(weights.T.contiguous(), clf)  # CLIP_benchmark keeps classifiers as [D, C]
    idx = torch.arange(90)
    loader = _Loader(
        [(idx[i : i + 32], labels[i : i + 32]) for i in range(0, 90, 32)],
        [f"c{i}" for i in range(num_classes)],
    )
    theirs = cb_zs.evaluate(
        FixedEncoders(feats), loader, None, None, None, "cpu", amp=False, load_clfs=[str(clf)]
    )
    # CLIP_benchmark scales logits by 100; equal logits stay equal and order is kept.
    ours = classification_metrics(100.0 * feats @ weights.T, labels)
    assert ours["top1"] == theirs["acc1"]
    # Both in float64: per class a count over its images (one rounding), then the mean of
    # the classes' recalls (num_classes + 1 more), each of values <= 1.
    tol = reorder_bound(num_classes + 2, 1.0, torch.float64)
    assert ours["mean_per_class_recall"] == pytest.approx(theirs["mean_per_class_recall"], abs=tol)
    if num_classes >= 5:
        assert ours["top5"] == theirs["acc5"]
    else:
        assert "top5" not in ours
    # The tie on classes 0 and 1 really is exercised: the data has such images.
    logits = feats @ weights.T
    assert (logits[:, 0] == logits.max(dim=1).values).any()


@pytest.mark.parametrize("seed", range(6))
def test_retrieval_equals_clip_benchmark_with_several_captions(seed):
    g = torch.Generator().manual_seed(100 + seed)
    n_images = 40
    per_image = torch.randint(1, 6, (n_images,), generator=g).tolist()  # 1-5 captions each
    images = tie_heavy(n_images, 8, g)
    texts = tie_heavy(sum(per_image), 8, g)
    texts[5] = texts[0]  # identical caption embeddings of different images
    captions, j = [], 0
    for n in per_image:
        captions.append([f"t{j + k}" for k in range(n)])
        j += n
    model = FixedEncoders(images, texts)

    def tokenizer(strings):
        return torch.tensor([int(s[1:]) for s in strings])

    idx = torch.arange(n_images)
    loader = [(idx[i : i + 16], captions[i : i + 16]) for i in range(0, n_images, 16)]
    theirs = cb_ret.evaluate(model, loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])
    owner = torch.tensor([i for i, n in enumerate(per_image) for _ in range(n)])
    pos = torch.zeros(n_images, len(owner), dtype=torch.bool)
    pos[owner, torch.arange(len(owner))] = True
    ours = retrieval(images, texts, pos)
    for k in (1, 5, 10):
        # Both are float32 means of hits: the same count over n, each rounded.
        t2i, i2t = theirs[f"image_retrieval_recall@{k}"], theirs[f"text_retrieval_recall@{k}"]
        assert ours[f"t2i_R@{k}"] == pytest.approx(t2i, abs=2 * count_mean_bound(t2i))
        assert ours[f"i2t_R@{k}"] == pytest.approx(i2t, abs=2 * count_mean_bound(i2t))
