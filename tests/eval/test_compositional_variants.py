"""The variants of experiments/compositional.py are valid runs, and its table reads right."""

import pytest

from clipforge.config import from_dict
from clipforge.losses import get_loss
from clipforge.models import get_model_config
from clipforge.train import TrainConfig
from experiments.compositional import VARIANTS, markdown, variant_config, warmup


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_is_a_valid_run(name):
    cfg = from_dict(TrainConfig, variant_config(name))
    model = get_model_config(cfg.model, cfg.model_args)
    get_loss(cfg.loss).build(cfg)  # the objective accepts the run's hard negatives
    pool = name.partition("+")[0]
    want = {"default": "mean", "filip": "mean"}.get(pool, pool)
    assert model.vision.pool == want
    assert bool(cfg.hard_negatives) == name.endswith(("+hardneg", "+textneg"))
    assert ("textneg" in cfg.loss) == name.endswith("+textneg")


def test_unknown_variant_and_schedule():
    with pytest.raises(SystemExit, match="unknown variant"):
        variant_config("cls+nosuch")
    assert warmup(350) == 50 and warmup(100) == 14 and warmup(1) == 1


def test_markdown_row():
    row = {"variant": "cls", "zeroshot": 0.834, "i2t_R@1": None, "attribute_swap": 0.5,
           "relation_swap": 0.875, "shape_swap": 1.0, "count_swap": 0.25, "seconds": 90}  # fmt: skip
    lines = markdown([row], 350, 0).splitlines()
    assert lines[0].startswith("| variant (350 steps, seed 0) | zero-shot |")
    assert lines[2] == "| cls | 83.4% | - | 50.0% | 87.5% | 100.0% | 25.0% | 1.5 min |"
