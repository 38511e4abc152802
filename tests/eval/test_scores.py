"""OOD scores, calibration and modality gap on hand-made numbers."""

import math

import pytest
import torch

from clipforge.eval.calibration import expected_calibration_error, reliability_bins
from clipforge.eval.modality_gap import centroid_distance, linear_separability, pca_2d
from clipforge.eval.ood import auroc, energy_score, fpr_at_tpr, mcm_score
from tests.tolerance import reorder_bound


def test_auroc_counts_ties_half_and_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    id_s, ood_s = torch.tensor([0.9, 0.5, 0.5]), torch.tensor([0.5, 0.1])
    # Pairs: (0.9 > both) 2, (0.5 vs 0.5) ties 2 x 0.5, (0.5 > 0.1) 2 -> 5 / 6.
    assert auroc(id_s, ood_s) == pytest.approx(5 / 6)
    g = torch.Generator().manual_seed(0)
    a, b = (
        torch.randint(0, 5, (50,), generator=g).float(),
        torch.randint(0, 4, (40,), generator=g).float(),
    )
    sk = roc_auc_score([1] * 50 + [0] * 40, torch.cat([a, b]).numpy())
    # Both float64. Ours sums 50 mean ranks (each a count over ties: one rounding) whose
    # sum over n1 n2 is <= (50 + 40) / 40; sklearn's trapezoid adds <= 6 steps (5 distinct
    # scores) of ~4 roundings and the rates' divisions, of values <= 1.
    tol = reorder_bound(50 + 1, 90 / 40, torch.float64) + reorder_bound(
        4 * 6 + 2, 1.0, torch.float64
    )
    assert auroc(a, b) == pytest.approx(sk, abs=tol)


def test_fpr_at_95():
    id_s = torch.arange(1, 21).float()  # 20 ID scores: 95% kept at threshold 2
    ood_s = torch.tensor([0.5, 1.5, 2.0, 3.0])
    assert fpr_at_tpr(id_s, ood_s) == 0.5  # 2.0 and 3.0 pass the threshold
    assert fpr_at_tpr(id_s, torch.tensor([0.0])) == 0.0


def test_mcm_and_energy():
    cos = torch.tensor([[0.0, math.log(3.0)]])
    # float32: log 3 rounded (changing p by <= p (1 - p) u log 3), then the softmax: the
    # max subtracted, 2 exps, their sum, a division; values <= 1 (max logit - max = 0).
    tol = reorder_bound(1 + 5, 1.0)
    assert mcm_score(cos).item() == pytest.approx(0.75, abs=tol)  # softmax(0, log 3) = (1/4, 3/4)
    logits = torch.tensor([[math.log(2.0), math.log(6.0)]])
    # float32: log 2 and log 6 rounded, the log-sum-exp (2 exps, 4 more roundings) of
    # values <= log 8.
    assert energy_score(logits).item() == pytest.approx(
        math.log(8.0), abs=reorder_bound(2 + 6, math.log(8.0))
    )


def test_ece_hand_case():
    conf = torch.tensor([0.95, 0.95, 0.55, 0.55, 0.55])
    correct = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0])
    # Bin (0.933, 1]: conf 0.95, acc 0.5 -> gap 0.45, weight 2/5; bin of 0.55: gap 0.45, 3/5.
    # The confidences are float32 (0.95 and 0.55 rounded: u each); the bins' sums and the
    # weighted mean over 15 bins are float64.
    tol = reorder_bound(1, 1.0) + reorder_bound(5 + 15 + 3, 1.0, torch.float64)
    assert expected_calibration_error(conf, correct) == pytest.approx(0.45, abs=tol)
    c, a, n = reliability_bins(conf, correct, bins=10)
    assert n.tolist() == [0, 0, 0, 0, 0, 3, 0, 0, 0, 2] and a[9] == 0.5
    # A confidence on a bin edge goes to the lower bin: (0.4, 0.5] holds 0.5.
    assert reliability_bins(torch.tensor([0.5]), torch.tensor([1.0]), bins=10)[2][4] == 1
    assert expected_calibration_error(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0])) == 0.0


def test_modality_gap_numbers():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[0.0, -1.0], [-1.0, 0.0]])
    # float32: the means of 2 rows are exact here ((1/2, 1/2) and -(1/2, 1/2)), the
    # difference (1, 1) too; only the norm rounds: 2 squares summed and the square root.
    assert centroid_distance(img, txt) == pytest.approx(math.sqrt(2.0), abs=reorder_bound(3, 2.0))
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 8, generator=g)
    assert linear_separability(a + 3.0, a - 3.0) == 1.0  # far apart along (1, ..., 1)
    same = linear_separability(a, torch.randn(200, 8, generator=g))
    assert 0.35 < same < 0.65  # one distribution: chance
    p_img, p_txt = pca_2d(a + 3.0, a - 3.0)
    # The first component is the offset between the modalities: it splits them by sign.
    side = p_img[0, 0].sign()
    assert (p_img[:, 0].sign() == side).all() and (p_txt[:, 0].sign() == -side).all()
    assert p_img.shape == (200, 2)


def test_calibration_task_uses_the_model_scale(tmp_path):
    from clipforge.eval import calibration
    from clipforge.eval.datasets import ClassificationData, ImageSet

    from .helpers import fixed_context

    # cos = (log 3, 0) / scale 1 -> p = 3/4 for class 0 on both images; one is class 1.
    feats = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0]])
    texts = {"x": torch.tensor([1.0, 0.0]), "y": torch.tensor([0.0, 1.0])}
    data = ClassificationData("t", ImageSet("t", 2, None), torch.tensor([0, 1]), ["x", "y"], ["{}"])
    res = calibration.run(fixed_context(tmp_path, {"t": feats}, texts, scale=1.0), data)
    # float32: log 3 rounded; the classifier normalises exact rows; cos is 2 products, the
    # logits one more; the softmax 5 roundings of values <= 1; the mean over 2 images two.
    # The ECE is |accuracy - confidence| of those confidences, in float64 after them.
    tol = reorder_bound(1 + 3 + 5 + 2, 1.0) + reorder_bound(2 + 15 + 3, 1.0, torch.float64)
    assert res.metrics["accuracy"] == 0.5
    assert res.metrics["mean_confidence"] == pytest.approx(0.75, abs=tol)
    assert res.metrics["ece"] == pytest.approx(0.25, abs=tol)
    # Cross-entropy: the same logits, a log-sum-exp (2 exps, 4 more roundings), the
    # target's logit subtracted and a mean over 2, of values <= log 4.
    nll = (math.log(4 / 3) + math.log(4)) / 2
    assert res.metrics["nll"] == pytest.approx(
        nll, abs=reorder_bound(1 + 3 + 6 + 1 + 2, math.log(4))
    )
    assert (tmp_path / "calibration-reliability.png").exists()


def test_long_captions_counts_truncated(tmp_path):
    from clipforge.data.tokenizer import get_tokenizer
    from clipforge.eval import long_captions
    from clipforge.eval.datasets import ImageSet, RetrievalData

    from .helpers import fixed_context

    short, long = "a red circle", "there are two objects. a red circle is left of a blue square."
    ctx = fixed_context(
        tmp_path,
        {"i": torch.eye(2)},
        {short: torch.tensor([1.0, 0.0]), long: torch.tensor([0.0, 1.0])},
    )
    ctx.tokenizer = get_tokenizer(8)  # 3 words + 2 special tokens fit; the long one does not
    res = long_captions.run(ctx, RetrievalData("t", ImageSet("i", 2, None), [[short], [long]]))
    assert res.metrics["truncated"] == 0.5 and res.metrics["i2t_R@1"] == 1.0
    assert res.details["context"] == 8


def test_long_captions_default_set_takes_the_scenes_size():
    from types import SimpleNamespace

    from clipforge.eval import long_captions

    # The shapes-world set honours --scenes as retrieval does (it used 1,000 always).
    data = long_captions._shapes(SimpleNamespace(image_size=16, seed=0, scenes=7))
    assert len(data.images) == 7 and len(data.texts) == 7
    assert all(t.startswith("There ") for t in data.texts)
