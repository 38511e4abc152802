"""The harness: one embedder and cache for every method, save/load, honest selection."""

from __future__ import annotations

import shutil

import pytest
import torch

from clipforge.adapt import METHODS, evaluate, fit, load, make_embedder
from clipforge.adapt.bench import bench, report
from clipforge.eval.datasets import image_folder
from clipforge.models import create_model

# Short searches for the trained methods; the others take no such option.
FAST = {"zslp": {"max_epochs": 25}, "tip_f": {"max_epochs": 3}, "coop": {"max_epochs": 10},
        "cocoop": {"max_steps": 10}, "clipn": {"max_epochs": 10}, "tca": {"start": 0}}  # fmt: skip


@pytest.fixture
def model(micro_args):
    torch.manual_seed(0)
    return create_model("tiny", micro_args)


def test_a_second_method_on_the_same_shots_embeds_nothing(model, novel_folders):
    train, _ = novel_folders
    emb = make_embedder(model)
    fit("gda", None, train, shots=4, embedder=emb)
    first = emb.embedded_images
    assert first == 24  # the training folder, once
    for m in ("tip", "zeroshot", "linear_probe"):
        fit(m, None, train, shots=4, seed=1, embedder=emb)
    assert emb.embedded_images == first


def test_save_and_load_give_the_same_logits(model, novel_folders, tmp_path):
    train, test = novel_folders
    emb = make_embedder(model)
    for m in METHODS.names():
        a = fit(m, None, train, shots=4, embedder=emb, **FAST.get(m, {}))
        path, side = a.save(tmp_path / f"{m}.safetensors")
        assert side.name == f"{m}.safetensors.json"
        b = load(path, emb)
        assert b.params == a.params and b.method == m
        data = image_folder(test)
        assert torch.equal(a.logits(data.images), b.logits(data.images))
        assert evaluate(a, test) == evaluate(b, test)


def test_load_refuses_another_model(model, novel_folders, tmp_path, micro_args):
    from clipforge.errors import ClipforgeError

    train, _ = novel_folders
    a = fit("tip", model, train, shots=2)
    a.save(tmp_path / "a.safetensors")
    torch.manual_seed(1)
    other = make_embedder(create_model("tiny", micro_args))
    with pytest.raises(ClipforgeError, match="fitted on another model"):
        load(tmp_path / "a.safetensors", other)


def test_test_labels_never_influence_a_choice(model, novel_folders, tmp_path):
    """Bench twice: once with the true test folder, once with its class folders' images
    swapped between classes (every test label changed). The chosen hyper-parameters of
    every method, shot count and seed are the same; the test accuracies are not."""
    train, test = novel_folders
    swapped = tmp_path / "swapped"
    shutil.copytree(test, swapped)
    names = sorted(p.name for p in swapped.iterdir() if p.is_dir())
    # Rotate the images of the class folders: red_hexagon's images become pink_circle's, ...
    tmp = swapped / "_tmp"
    (swapped / names[0]).rename(tmp)
    for a, b in zip(names[1:], names[:-1], strict=True):
        (swapped / a).rename(swapped / b)
    tmp.rename(swapped / names[-1])
    methods = ["linear_probe", "zslp", "gda", "tip", "tip_f", "coop", "cocoop", "clipn", "caps"]
    emb = make_embedder(model)
    r1 = bench(emb, image_folder(train), image_folder(test), methods, [4], [0, 1], FAST)
    r2 = bench(emb, image_folder(train), image_folder(swapped), methods, [4], [0, 1], FAST)
    for m in methods:
        p1 = [s["params"] for s in r1["methods"][m]["4"]["seeds"]]
        p2 = [s["params"] for s in r2["methods"][m]["4"]["seeds"]]
        assert p1 == p2, m
        assert all("validation" in p["selection"] for p in p1)
    acc1 = [s["top1"] for m in methods for s in r1["methods"][m]["4"]["seeds"]]
    acc2 = [s["top1"] for m in methods for s in r2["methods"][m]["4"]["seeds"]]
    assert acc1 != acc2  # the test labels did change what is measured
    assert "| tip |" in report(r1, "t")


def test_zeroshot_descriptions_average_the_described_prompts(model, novel_folders, tmp_path):
    import json

    from clipforge.errors import ClipforgeError

    train, _ = novel_folders
    emb = make_embedder(model)
    desc = tmp_path / "desc.json"
    desc.write_text(json.dumps({"red hexagon": ["six sides", "six corners"]}))
    a = fit("zeroshot", None, train, shots=2, embedder=emb, descriptions=str(desc))
    data = image_folder(train)
    plain = emb.classifier(data.classnames, data.templates)
    i = data.classnames.index("red hexagon")
    prompts = ["a photo of a red hexagon.", "a photo of a red hexagon, which has six sides",
               "a photo of a red hexagon, which has six corners"]  # fmt: skip
    want = torch.nn.functional.normalize(emb.texts(prompts).mean(dim=0), dim=-1)
    # The same float32 features averaged in another order: a few ulps.
    assert torch.allclose(a.tensors["text"][i], want, atol=1e-6)
    others = [j for j in range(len(data.classnames)) if j != i]
    assert torch.allclose(a.tensors["text"][others], plain[others], atol=1e-6)
    assert a.params["descriptions"] == 2
    desc.write_text(json.dumps({"blue moon": ["craters"]}))
    with pytest.raises(ClipforgeError, match="unknown class"):
        fit("zeroshot", None, train, shots=2, embedder=emb, descriptions=str(desc))


def test_caps_reads_the_folders_captions_and_chooses_on_validation(model, novel_folders):
    train, test = novel_folders
    data = image_folder(train)
    assert data.captions is not None and len(data.captions) == len(data.labels)
    emb = make_embedder(model)
    a = fit("caps", None, train, shots=4, embedder=emb)
    assert a.tensors["captions"].shape == a.tensors["keys"].shape
    assert "validation" in a.params["selection"]
    # The caption features are the embedder's text features of the shots' captions.
    shot_caps = emb.texts(sorted(set(data.captions)))
    assert all(any(torch.allclose(c, s) for s in shot_caps) for c in a.tensors["captions"])
    assert 0 <= evaluate(a, test)["top1"] <= 1


def test_bench_all_leaves_out_caption_methods_on_a_folder_without_captions():
    from types import SimpleNamespace

    from clipforge.adapt.bench import resolve_methods, usable_methods

    everything = resolve_methods("all")
    assert "caps" in everything
    bare, with_caps = SimpleNamespace(captions=None), SimpleNamespace(captions=["a", "b"])
    kept, skipped = usable_methods("all", everything, bare)
    assert "caps" not in kept and set(skipped) == {"caps"} and len(kept) == len(everything) - 1
    assert usable_methods("all", everything, with_caps) == (everything, {})
    # Named explicitly, it stays and fails with its own reason.
    assert usable_methods("caps,tip", ["caps", "tip"], bare) == (["caps", "tip"], {})
