import pytest
import torch

from clipforge.errors import ClipforgeError
from clipforge.eval.knn import few_shot, knn_predict, prototype_predict
from clipforge.eval.linear_probe import linear_probe
from clipforge.eval.probe_data import Features, stratified_split
from tests.tolerance import count_mean_bound, reorder_bound


def _f(rows, labels):
    return Features(
        torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float), dim=-1),
        torch.tensor(labels),
    )


def test_knn_hand_case():
    train = _f([[1, 0], [0.9, 0.1], [0, 1], [0.6, 0.4]], [0, 0, 1, 1])
    query = torch.nn.functional.normalize(torch.tensor([[0.7, 0.3], [0.1, 0.9]]), dim=-1)
    # Nearest to (0.7, 0.3) is the class-1 point (0.6, 0.4); its 3 nearest are two 0s, one 1.
    assert knn_predict(train, query, 1, 2).tolist() == [1, 1]
    assert knn_predict(train, query, 3, 2).tolist() == [0, 1]


def test_prototypes_and_few_shot():
    support = _f([[1, 0], [0, 1]], [0, 2])  # class 1 has no support image: never predicted
    query = torch.nn.functional.normalize(torch.tensor([[0.8, 0.2], [0.4, 0.6]]), dim=-1)
    assert prototype_predict(support, query, 3).tolist() == [0, 2]
    train = _f([[1, 0]] * 3 + [[0, 1]] * 3, [0] * 3 + [1] * 3)
    test = _f([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], [0, 1, 1])
    m = few_shot(train, test, shots=(1,), ks=(1,), episodes=2)
    # float32 means of hits (exact counts over 3, rounded); the shots' mean over 2 episodes
    # adds float64 roundings only.
    tol = count_mean_bound(2 / 3) + reorder_bound(2, 1.0, torch.float64)
    assert m == {
        "knn1_top1": pytest.approx(2 / 3, abs=tol),
        "1shot_top1": pytest.approx(2 / 3, abs=tol),
    }


def test_linear_probe_separable_and_picks_regularisation():
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(3) * 3

    def make(y):
        return Features(centres[y] + 0.3 * torch.randn(len(y), 3, generator=g), y)

    train = make(torch.tensor([0] * 20 + [1] * 5 + [2] * 5))
    val, test = make(torch.arange(3).repeat(5)), make(torch.arange(3).repeat(10))
    metrics, best, acc = linear_probe(train, val, test, grid=(1e-4, 1.0))
    assert metrics["top1"] == 1.0 and metrics["mean_per_class_recall"] == 1.0
    # With C = 1e-4 the weights shrink to ~0 and the (unpenalised) intercept picks the
    # majority class of the training set for every image: a third of the validation set.
    third = pytest.approx(1 / 3, abs=count_mean_bound(1 / 3))  # a float32 mean of hits
    assert acc[1e-4] == third and acc[1.0] == 1.0 and best == 1.0


def test_stratified_split_per_class():
    labels = torch.tensor([0] * 10 + [1] * 5)
    tr, va, te = stratified_split(labels, seed=1)
    assert sorted(torch.cat([tr, va, te]).tolist()) == list(range(15))
    assert (labels[tr] == 0).sum() == 6 and (labels[va] == 0).sum() == 2
    assert (labels[tr] == 1).sum() == 3 and (labels[te] == 1).sum() == 1
    with pytest.raises(ClipforgeError, match="class 2 has 2 images"):
        stratified_split(torch.tensor([0, 0, 0, 2, 2]))
