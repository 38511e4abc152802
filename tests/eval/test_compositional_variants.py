"""The variants of experiments/compositional.py are valid runs, and its table reads right."""

import pytest

from clipforge.config import from_dict
from clipforge.losses import get_loss
from clipforge.models import get_model_config
from clipforge.train import TrainConfig
from clipforge.train.builders import shapes_config
from experiments.compositional import VARIANTS, markdown, variant_config, warmup


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_is_a_valid_run(name):
    cfg = from_dict(TrainConfig, variant_config(name))
    model = get_model_config(cfg.model, cfg.model_args)
    get_loss(cfg.loss).build(cfg)  # the objective accepts the run's hard negatives
    base, *mods = name.split("+")
    want = {"default": "mean", "filip": "mean", "calib": "cls"}.get(base, base)
    want = "map" if "map" in mods else want
    assert model.vision.pool == want
    negatives = {"hardneg", "attrneg", "textneg", "textneg01"} & set(mods)
    assert bool(cfg.hard_negatives) == bool(negatives)
    assert (cfg.hard_negatives == "attribute") == ("attrneg" in mods)
    assert ("textneg" in cfg.loss) == bool({"textneg", "textneg01"} & set(mods))
    if base == "calib":
        # CALIBRATION.md's recipe: CLIP's plain ViT at lr 1e-3, 30 warm-up steps.
        assert (model.vision.stem, model.vision.pos_init) == (
            "conv" if "conv" in mods else "patch",
            "sincos" if "sincos" in mods else "random",
        )
        assert (cfg.lr, cfg.warmup) == (1e-3, 30)


def test_calib_modifiers_combine():
    over = variant_config("calib+conv+sincos+attrneg")
    assert over["model_args"] == {
        "vision.stem": "conv", "vision.pos_init": "sincos", "vision.pool": "cls"
    }  # fmt: skip
    assert over["hard_negatives"] == "attribute" and "loss" not in over
    assert variant_config("default+textneg01")["loss"] == "clip+0.1*textneg"
    pairs = from_dict(TrainConfig, variant_config("default+attrneg+pairs"))
    assert pairs.shapes_args == {"group_prob": 0.2} and pairs.hard_negatives == "attribute"


def test_numbered_modifiers():
    over = variant_config("default+bil256+attrneg+hnw5+pairs10")
    cfg = from_dict(TrainConfig, over)
    model = get_model_config(cfg.model, cfg.model_args)
    assert (model.vision.bilinear, model.text.bilinear) == (256, 256)
    assert cfg.hard_negative_weight == 5.0 and cfg.shapes_args == {"group_prob": 0.1}
    bare = variant_config("default+bil+attrneg+hnw3+pairs")  # the README's recipe
    assert bare["model_args"] == {"vision.bilinear": 128, "text.bilinear": 128}
    assert bare["hard_negative_weight"] == 3.0 and bare["shapes_args"] == {"group_prob": 0.2}
    assert variant_config("default+attrneg+hnw10")["hard_negative_weight"] == 10.0
    with pytest.raises(SystemExit, match="hnw needs a number"):
        variant_config("default+attrneg+hnw")
    with pytest.raises(SystemExit, match="hnw is given twice"):
        variant_config("default+attrneg+hnw3+hnw10")


def test_twin_modifiers():
    over = variant_config("default+bil+attrneg+hnw3+pairs+twins100+twfrom100")
    cfg = from_dict(TrainConfig, over)
    assert cfg.shapes_args == {
        "group_prob": 0.2, "twins": 1.0, "twin_kinds": ["attribute"],
        "twins_from": 100 * cfg.batch_size,
    }  # fmt: skip
    shapes = shapes_config(cfg)  # what the trainer's shapes world is built from
    assert shapes.twins_from == 12800 and tuple(shapes.twin_kinds) == ("attribute",)
    assert variant_config("default+twins")["shapes_args"] == {
        "twins": 0.5, "twin_kinds": ["attribute"],
    }  # fmt: skip
    with pytest.raises(SystemExit, match="twfrom needs twins"):
        variant_config("default+twfrom100")
    weighted = from_dict(TrainConfig, variant_config("default+twins100+tww30"))
    assert shapes_config(weighted).twin_weight == 0.3
    with pytest.raises(SystemExit, match="tww needs twins"):
        variant_config("default+tww30")
    with pytest.raises(SystemExit, match="reltw needs twins"):
        variant_config("default+reltw")
    both = from_dict(TrainConfig, variant_config("default+hardneg+twins100+reltw"))
    assert tuple(shapes_config(both).twin_kinds) == ("attribute", "relation")


def test_shape_negatives_join_the_other_kinds():
    assert variant_config("default+attrneg+shapeneg")["hard_negatives"] == "attribute,shape"
    assert variant_config("default+hardneg+shapeneg")["hard_negatives"] == (
        "attribute,relation,shape"
    )
    assert variant_config("default+shapeneg")["hard_negatives"] == "shape"
    cfg = from_dict(TrainConfig, variant_config("default+attrneg+shapeneg+hnw3"))
    assert cfg.hard_negatives == "attribute,shape" and cfg.hard_negative_weight == 3.0


def test_unknown_variant_and_schedule():
    with pytest.raises(SystemExit, match="unknown variant"):
        variant_config("cls+nosuch")
    with pytest.raises(SystemExit, match="unknown variant"):
        variant_config("default+conv")  # architecture modifiers belong to calib
    with pytest.raises(SystemExit, match="exclude each other"):
        variant_config("calib+hardneg+attrneg")
    assert warmup(350) == 50 and warmup(100) == 14 and warmup(1) == 1


def test_markdown_row():
    row = {"variant": "cls", "zeroshot": 0.834, "i2t_R@1": None, "attribute_swap": 0.5,
           "relation_swap": 0.875, "shape_swap": 1.0, "count_swap": 0.25, "seconds": 90}  # fmt: skip
    lines = markdown([row], 350, 0).splitlines()
    assert lines[0].startswith("| variant (350 steps, seed 0) | zero-shot |")
    assert lines[2] == "| cls | 83.4% | - | 50.0% | 87.5% | 100.0% | 25.0% | 1.5 min |"
