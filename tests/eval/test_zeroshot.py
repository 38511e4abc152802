import pytest
import torch

from clipforge.data.tokenizer import get_tokenizer
from clipforge.eval.embed import Embedder
from clipforge.eval.zeroshot import classification_metrics, zero_shot
from clipforge.models import create_model
from tests.tolerance import reorder_bound


def test_metrics_hand_case():
    # 4 samples, 6 classes. Predictions: 0 (right), 2 (wrong, true 1 is 2nd), 2 (right), 5 (wrong, true 3 last).
    logits = torch.tensor(
        [
            [9, 1, 2, 3, 4, 5],
            [0, 8, 9, 1, 2, 3],
            [0, 1, 9, 2, 3, 4],
            [6, 5, 4, 0, 3, 9],
        ],
        dtype=torch.float,
    )
    labels = torch.tensor([0, 1, 2, 3])
    m = classification_metrics(logits, labels)
    assert m["top1"] == 0.5
    assert m["top5"] == 0.75  # class 3 is ranked 6th for sample 3
    assert m["mean_per_class_recall"] == 0.5


def test_mean_per_class_recall_differs_from_accuracy():
    logits = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 0, 0])
    labels[3] = 1
    m = classification_metrics(logits, labels)
    assert m["top1"] == 1.0
    labels = torch.tensor([0, 0, 1, 1])
    m = classification_metrics(logits, labels)
    assert m["top1"] == 0.75 and m["mean_per_class_recall"] == 0.75
    labels = torch.tensor([0, 0, 0, 1])
    logits = torch.tensor([[1.0, 0.0]] * 4)
    m = classification_metrics(logits, labels)
    assert m["top1"] == 0.75 and m["mean_per_class_recall"] == 0.5


def test_template_ensemble_is_normalised_mean(micro_args):
    model = create_model("tiny", micro_args).eval()
    tok = get_tokenizer(24)
    templates = ["a {}", lambda c: f"a photo of a {c}"]
    w = Embedder(model, tok, progress=False).classifier(["red circle", "blue square"], templates)
    assert w.shape == (2, 32)
    e = model.encode_text(tok(["a red circle", "a photo of a red circle"]), normalize=True)
    expected = torch.nn.functional.normalize(e.mean(0), dim=-1)
    # The same two texts in one batch: at most the mean of 2 rows and the normalisation
    # (32 squares, the square root, the division) round otherwise, for entries <= 1.
    assert torch.allclose(w[0], expected, rtol=0, atol=reorder_bound(2 + 32 + 2, 1.0))
    feats = torch.nn.functional.normalize(torch.stack([w[1], w[0]]), dim=-1)
    assert zero_shot(feats, torch.tensor([1, 0]), w)["top1"] == pytest.approx(1.0)


def test_confusion_matrix_and_task(tmp_path):
    from clipforge.eval import zeroshot
    from clipforge.eval.datasets import ClassificationData, ImageSet

    from .helpers import fixed_context

    cm = zeroshot.confusion_matrix(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), 3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    # Three classes on the axes; image 3 (class 2) lies nearer class 1.
    feats = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 0.8, 0.6]])
    texts = {"a x": torch.eye(3)[0], "a y": torch.eye(3)[1], "a z": torch.eye(3)[2]}
    data = ClassificationData(
        "toy", ImageSet("toy", 4, None), torch.tensor([0, 1, 2, 2]), ["x", "y", "z"], ["a {}"]
    )
    res = zeroshot.run(fixed_context(tmp_path, {"toy": feats}, texts), data)
    assert res.metrics == {"top1": 0.75, "mean_per_class_recall": pytest.approx(5 / 6)}
    assert (tmp_path / res.plots["confusion matrix"]).stat().st_size > 1000
    assert res.details["worst_classes"]["z"] == 0.5
