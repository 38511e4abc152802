import json
import math

import pytest
import torch
from PIL import Image

from clipforge.data.shapes import ShapesWorld
from clipforge.data.writers import write_manifest, write_shards
from clipforge.errors import ClipforgeError
from clipforge.models import load
from clipforge.train import TrainConfig, train


def _cfg(tmp_path, micro_args, **kw) -> TrainConfig:
    base = dict(
        model_args=micro_args, batch_size=8, steps=6, warmup=2, log_every=2, eval_every=0,
        ckpt_every=3, eval_per_class=1, eval_pairs=20, progress=False, out=str(tmp_path / "run"),
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def test_run_folder_contents(tmp_path, micro_args):
    run = train(_cfg(tmp_path, micro_args, eval_every=3))
    for name in ("config.yaml", "model.yaml", "metrics.jsonl", "eval.json", "curve.png"):
        assert (run / name).is_file(), name
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [2, 4, 6]
    for key in ("lr", "logit_scale", "grad_norm", "param_norm", "update_norm", "samples_per_s"):
        assert key in steps[0]
    assert any(r.get("split") == "val" for r in rows)
    final = json.loads((run / "eval.json").read_text())
    assert 0 <= final["zeroshot/top1"] <= 1 and "retrieval/i2t_R@1" in final
    model = load(run)
    assert model.cfg.vision.image_size == 16


def test_siglip_bf16_and_accumulation(tmp_path, micro_args):
    run = train(_cfg(tmp_path, micro_args, loss="siglip", precision="bf16", accum_steps=2))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert "logit_bias" in rows[0]
    assert load(run).logit_bias is not None


def test_loss_decreases_on_shapes(tmp_path, micro_args):
    run = train(
        _cfg(tmp_path, micro_args, steps=60, batch_size=32, lr=2e-3, log_every=10, warmup=5)
    )
    losses = [
        json.loads(x)["loss"]
        for x in (run / "metrics.jsonl").read_text().splitlines()
        if '"loss"' in x
    ]
    assert losses[-1] < 0.9 * losses[0]


def _with_corrupt(tmp_path, n=200, bad=2, fmt="csv"):
    world = ShapesWorld(16)
    samples = [world.sample(i) for i in range(n)]
    if fmt == "wds":
        return write_shards(samples, tmp_path / "data", shard_size=50)
    manifest = write_manifest(samples, tmp_path / "data", fmt=fmt)
    images = sorted((tmp_path / "data" / "images").iterdir())
    for p in images[:bad]:
        p.write_bytes(p.read_bytes()[:40])  # truncated PNG
    return manifest


def test_corrupt_images_are_skipped_and_counted(tmp_path, micro_args):
    manifest = _with_corrupt(tmp_path, n=200, bad=2)  # 1% corrupt
    run = train(_cfg(tmp_path, micro_args, data=str(manifest), steps=30, batch_size=16))
    final = json.loads((run / "eval.json").read_text())
    # 30 steps x 16 = 480 samples: 2.4 epochs over 200 images, 2 bad per epoch.
    assert final["skipped"] == {"unreadable_image": 4} or final["skipped"] == {
        "unreadable_image": 6
    }
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-2]["skipped"] == sum(final["skipped"].values())


def test_shards_train(tmp_path, micro_args):
    _with_corrupt(tmp_path, n=60, fmt="wds")
    pattern = str(tmp_path / "data" / "train-{000000..000001}.tar")
    run = train(_cfg(tmp_path, micro_args, data=pattern, steps=4))
    assert json.loads((run / "eval.json").read_text())["skipped"] == {}


def test_skip_rate_limit(tmp_path, micro_args):
    manifest = _with_corrupt(tmp_path, n=20, bad=12)
    with pytest.raises(ClipforgeError, match="skipped"):
        train(_cfg(tmp_path, micro_args, data=str(manifest), steps=5, max_skip_rate=0.2))


def test_config_errors(tmp_path, micro_args):
    with pytest.raises(ClipforgeError, match="unknown loss"):
        train(_cfg(tmp_path, micro_args, loss="nope"))
    with pytest.raises(ClipforgeError, match="not divisible by patch size"):
        train(_cfg(tmp_path, {**micro_args, "vision.image_size": 18}))
    with pytest.raises(ClipforgeError, match="not found"):
        train(_cfg(tmp_path, micro_args, data=str(tmp_path / "missing.csv")))


def test_refuses_to_overwrite_a_run(tmp_path, micro_args):
    train(_cfg(tmp_path, micro_args, steps=3))
    with pytest.raises(ClipforgeError, match="already holds a run"):
        train(_cfg(tmp_path, micro_args, steps=3))


def test_cmyk_and_palette_images_train(tmp_path, micro_args):
    d = tmp_path / "odd"
    d.mkdir()
    rows = ["image,caption"]
    for i in range(8):
        im = ShapesWorld(16).sample(i).image
        im = im.convert("CMYK") if i % 2 else im.convert("P")
        name = f"{i}.{'jpg' if i % 2 else 'png'}"
        im.save(d / name)
        rows.append(f"{name},caption {i}")
    (d / "m.csv").write_text("\n".join(rows) + "\n")
    run = train(_cfg(tmp_path, micro_args, data=str(d / "m.csv"), steps=2))
    assert json.loads((run / "eval.json").read_text())["skipped"] == {}
    assert Image.open(d / "1.jpg").mode == "CMYK"


def test_all_captions_and_hard_negatives_train(tmp_path, micro_args):
    run = train(
        _cfg(
            tmp_path, micro_args, caption="all", hard_negatives="attribute,relation,count,shape",
            hard_negative_weight=2.0, accum_steps=2,
        )
    )  # fmt: skip
    final = json.loads((run / "eval.json").read_text())
    assert final["step"] == 6
    with pytest.raises(ClipforgeError, match="unknown hard-negative kind"):
        train(_cfg(tmp_path / "b", micro_args, hard_negatives="colour"))
    with pytest.raises(ClipforgeError, match="caption strategy"):
        train(_cfg(tmp_path / "c", micro_args, caption="some"))


def test_init_from_a_run_and_shapes_args(tmp_path, micro_args):
    src = train(_cfg(tmp_path / "a", micro_args, steps=2, out=str(tmp_path / "a")))
    lr = 1e-12
    run = train(
        _cfg(
            tmp_path, micro_args, steps=1, lr=lr, warmup=0, init=str(src),
            shapes_args={"count_weights": [0.0, 1.0], "group_prob": 0.0},
        )
    )  # fmt: skip
    # Parameters only: a training step moves the stem's BatchNorm running statistics.
    a, b = dict(load(src).named_parameters()), dict(load(run).named_parameters())
    # One AdamW step: Adam's first update is lr g / (|g| + eps), at most lr; the decay takes
    # lr wd |w|; the new weight rounds once in float32 (u |w|, eps covers it).
    rtol = torch.finfo(torch.float32).eps + lr * TrainConfig().weight_decay
    assert all(torch.allclose(a[k], b[k], rtol=rtol, atol=lr) for k in a)
    with pytest.raises(ClipforgeError, match="unknown shapes-args"):
        train(_cfg(tmp_path / "c", micro_args, shapes_args={"palette": 3}))
    with pytest.raises(ClipforgeError, match="architecture differs"):
        train(_cfg(tmp_path / "d", {**micro_args, "embed_dim": 16}, init=str(src)))


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_init_temperature_sets_the_new_models_scale(tmp_path, micro_args, loss):
    lr = 1e-6
    run = train(_cfg(tmp_path, micro_args, loss=loss, steps=1, warmup=0, lr=lr,
                     init_temperature=0.02))  # fmt: skip
    # One AdamW step moves the undecayed scale by at most lr (Adam's first update is
    # lr g / (|g| + eps)), plus one float32 rounding of log(50).
    scale = load(run).logit_scale.item()
    assert scale == pytest.approx(math.log(50.0), abs=lr + 4 * torch.finfo(torch.float32).eps)
    default = train(_cfg(tmp_path / "b", micro_args, loss=loss, steps=1, warmup=0, lr=lr))
    own = math.log(10.0) if loss == "siglip" else math.log(1 / 0.07)  # each paper's start
    assert load(default).logit_scale.item() == pytest.approx(own, abs=lr + 1e-6)
    with pytest.raises(ClipforgeError, match="--init-temperature sets a new model's"):
        train(_cfg(tmp_path / "c", micro_args, init=str(run), init_temperature=0.02))


def test_shapes_args_colourless_drops_the_colour_words_of_a_share_of_singles_and_groups():
    from clipforge.data.shapes import COLOURS, without_colour
    from clipforge.train.builders import build_source

    plain = build_source(TrainConfig(), 16)
    mixed = build_source(TrainConfig(shapes_args={"colourless": 0.5}), 16)
    eligible = changed = 0
    for i in range(200):
        a, b = plain.get(i), mixed.get(i)
        assert a.meta == b.meta and a.image.tobytes() == b.image.tobytes()
        if a.meta["kind"] not in ("single", "group"):
            assert b.texts == a.texts  # two or more colours: nothing to leave out
            continue
        eligible += 1
        if b.texts != a.texts:
            changed += 1
            colour = a.meta["objects"][0]["colour"]
            assert b.texts == [without_colour(t, colour) for t in a.texts]
            assert not any(c in t.split() for t in b.texts for c in COLOURS)
    # A seeded half of the eligible scenes: 4.5 standard deviations out has p < 1e-5.
    assert abs(changed - eligible / 2) <= 4.5 * (eligible / 4) ** 0.5 and eligible >= 100
    every = build_source(TrainConfig(shapes_args={"colourless": 1}), 16)
    assert every.get(2).texts[:2] == ["a small circle", "a circle"]  # "a small blue circle"
    with pytest.raises(ClipforgeError, match="colourless is a share in"):
        build_source(TrainConfig(shapes_args={"colourless": 1.5}), 16)


def test_shapes_args_change_the_scene_mix():
    from clipforge.train.builders import build_source

    cfg = TrainConfig(shapes_args={"count_weights": [0.0, 1.0], "group_prob": 0.0})
    src = build_source(cfg, 16)
    assert {src.get(i).meta["kind"] for i in range(20)} == {"pair"}


def test_shapes_args_colours_choose_the_palette():
    from clipforge.train.builders import build_source

    held_out = ["pink", "brown", "grey"]  # colours the default scenes never use
    src = build_source(TrainConfig(shapes_args={"colours": held_out}), 16)
    samples = [src.get(i) for i in range(30)]
    seen = {o["colour"] for s in samples for o in s.meta["objects"]}
    assert seen == set(held_out)  # 30 scenes of 1-4 objects: every colour drawn, no other
    assert all(any(c in s.texts[0] for c in held_out) for s in samples)  # named in text
    default = build_source(TrainConfig(), 16)
    assert not {o["colour"] for i in range(30) for o in default.get(i).meta["objects"]} & set(
        held_out
    )
    for bad, why in ((["pink", "teal"], "unknown shapes colours teal"), ("pink", "list")):
        with pytest.raises(ClipforgeError, match=why):
            build_source(TrainConfig(shapes_args={"colours": bad}), 16)


def test_shapes_args_long_captions_replace_a_share_of_the_captions():
    from clipforge.data.shapes import long_caption
    from clipforge.train.builders import build_source

    plain = build_source(TrainConfig(), 16)
    mixed = build_source(TrainConfig(shapes_args={"long_captions": 0.5}), 16)
    longs = 0
    for i in range(40):
        a, b = plain.get(i), mixed.get(i)
        assert a.meta == b.meta  # the same scene: only its captions change
        if b.texts != a.texts:
            assert b.texts == [long_caption(mixed.world.scene(i), 16)]
            longs += 1
    assert 8 <= longs <= 32  # a seeded half of 40: outside 8..32 has probability < 1e-4
    every = build_source(TrainConfig(shapes_args={"long_captions": 1}), 16)
    assert all(every.get(i).texts[0].startswith("There ") for i in range(5))
    with pytest.raises(ClipforgeError, match="share in"):
        build_source(TrainConfig(shapes_args={"long_captions": 2}), 16)
