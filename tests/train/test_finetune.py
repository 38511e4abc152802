"""Fine-tuning options: locked towers, LoRA, exact accumulation, patch dropout."""

import copy
import json
from dataclasses import replace

import pytest
import torch

from clipforge.data.batches import Batch
from clipforge.errors import ClipforgeError
from clipforge.losses import get_loss
from clipforge.models import CLIP, get_model_config, load
from clipforge.models.lora import load_adapters, merge_lora
from clipforge.train import TrainConfig, train
from clipforge.train import trainer as trainer_module
from clipforge.train.distributed import World
from clipforge.train.optim import build_optimizer
from clipforge.train.step import Stepper
from tests.tolerance import reorder_bound
from tests.train.batches import B, mixed_batch


def _cfg(tmp_path, micro_args, name="run", **kw) -> TrainConfig:
    base = dict(
        model_args=micro_args, batch_size=8, steps=4, warmup=1, log_every=2, eval_every=0,
        ckpt_every=2, evals="none", progress=False, out=str(tmp_path / name),
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A briefly trained micro model to fine-tune from."""
    from tests.conftest import MICRO_ARGS

    tmp = tmp_path_factory.mktemp("base")
    return train(_cfg(tmp, dict(MICRO_ARGS), steps=2))


def _capture(monkeypatch) -> dict:
    """Keep the trainer's model and optimizer of the next run."""
    seen: dict = {}
    real = trainer_module.build_optimizer

    def spy(trained, *a, **kw):
        seen["model"], seen["opt"] = trained[0], real(trained, *a, **kw)
        return seen["opt"]

    monkeypatch.setattr(trainer_module, "build_optimizer", spy)
    return seen


def _optimizer_state_ids(opt) -> set[int]:
    return {id(p) for p in opt.state} | {id(p) for g in opt.param_groups for p in g["params"]}


@pytest.mark.parametrize(
    "flags, locked_prefixes, trained_prefixes",
    [
        ({"lock_image": True}, ["visual."], ["text.", "logit_scale"]),
        ({"lock_text": True}, ["text."], ["visual.", "logit_scale"]),
        (
            {"lock_image": True, "lock_image_unlocked_layers": 1, "freeze_norms": True},
            ["visual.patch_embed", "visual.pos_embed", "visual.norm_post",
             "visual.transformer.blocks.0.norm1", "text.norm_final"],
            ["visual.transformer.blocks.0.attn", "visual.proj", "text.transformer.blocks.0.mlp"],
        ),
    ],
)  # fmt: skip
def test_locked_parameters_stay_bit_identical(
    tmp_path, micro_args, base_run, monkeypatch, flags, locked_prefixes, trained_prefixes
):
    seen = _capture(monkeypatch)
    run = train(_cfg(tmp_path, micro_args, init=str(base_run), **flags))
    before = load(base_run).state_dict()
    after = load(run).state_dict()
    opt_ids = _optimizer_state_ids(seen["opt"])
    named = dict(seen["model"].named_parameters())
    for name, p in named.items():
        locked = any(name.startswith(x) for x in locked_prefixes)
        trained = any(name.startswith(x) for x in trained_prefixes)
        if locked:
            assert torch.equal(after[name], before[name]), name
            assert p.grad is None and id(p) not in opt_ids, name
        if trained:
            assert not torch.equal(after[name], before[name]), name
            assert p in seen["opt"].state, name
    # A locked conv stem's batch norms stay in eval mode (a copy too: the evaluator's
    # bf16 encoder and an EMA teacher are copies) and keep their loaded statistics.
    if flags.get("lock_image"):
        copied = copy.deepcopy(seen["model"]).train()
        norms = [
            m for m in copied.visual.patch_embed.modules() if isinstance(m, torch.nn.BatchNorm2d)
        ]
        assert norms and not any(m.training for m in norms)
    if flags.get("lock_image") and not flags.get("lock_image_unlocked_layers"):
        for k in before:
            if "running_" in k:
                assert torch.equal(after[k], before[k]), k


def test_lock_flags_are_checked_before_any_work(tmp_path, micro_args):
    with pytest.raises(ClipforgeError, match="needs --lock-text"):
        train(_cfg(tmp_path, micro_args, lock_text_unlocked_layers=1))
    with pytest.raises(ClipforgeError, match="image tower has 1 blocks"):
        train(_cfg(tmp_path, micro_args, lock_image=True, lock_image_unlocked_layers=2))
    with pytest.raises(ClipforgeError, match="--lora-targets"):
        train(_cfg(tmp_path, micro_args, lora_rank=2, lora_targets="qkv,bogus"))
    assert not (tmp_path / "run").exists()


def test_lora_trains_only_adapters_and_merges(tmp_path, micro_args, base_run, monkeypatch):
    seen = _capture(monkeypatch)
    run = train(_cfg(tmp_path, micro_args, init=str(base_run), lora_rank=2, lora_alpha=4.0))
    model = seen["model"]
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(n.endswith(("lora_a", "lora_b")) for n in trained)
    # 4 targets x 2 towers x 1 block, each r x (in + out).
    expected = 2 * 2 * (32 + 96 + 32 + 32 + 32 + 128 + 128 + 32)
    assert sum(model.get_parameter(n).numel() for n in trained) == expected
    assert len(seen["opt"].state) == len(trained)
    base = load(base_run).state_dict()
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    for k, v in base.items():  # base weights untouched, buffers (batch norm) aside
        if "running_" not in k and "num_batches" not in k:
            assert torch.equal(last[k], v), k
    adapters = load_adapters(run / "adapters.safetensors")
    assert set(adapters) == {k for k in last if k.endswith(("lora_a", "lora_b", "lora_scale"))}
    assert (run / "adapters.safetensors").stat().st_size < 40_000

    # The unmerged model (the trainer's, with adapters) against the merged one load gives.
    unmerged = model.eval()
    merged = load(run)
    assert not any("lora" in k for k in merged.state_dict())
    g = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, 16, 16, generator=g, dtype=torch.float64)
    tokens = torch.randint(1, 400, (8, 24), generator=g)
    with torch.no_grad():
        for enc, x in (("encode_image", images), ("encode_text", tokens)):
            a = getattr(unmerged, enc)(x.float() if x.is_floating_point() else x, normalize=True)
            b = getattr(merged, enc)(x.float() if x.is_floating_point() else x, normalize=True)
            assert float((a - b).abs().max()) <= 1e-5, enc  # the figure, float32
            # W x + s B (A x) and (W + s B A) x are the same function: merged in float64
            # they differ only by rounding (the chain bound of the exactness tests below).
            wide = copy.deepcopy(unmerged).double()
            a = getattr(wide, enc)(x, normalize=True)
            b = getattr(merge_lora(copy.deepcopy(wide)), enc)(x, normalize=True)
            tol = reorder_bound(TERMS, CANCEL, torch.float64)
            assert float((a - b).abs().max()) <= tol, enc


def test_lora_run_resumes_bit_for_bit(tmp_path, micro_args, base_run):
    kw = dict(init=str(base_run), lora_rank=2, steps=4, ckpt_every=2)
    whole = train(_cfg(tmp_path, micro_args, "whole", **kw))
    part = train(_cfg(tmp_path, micro_args, "part", **{**kw, "steps": 2}))
    resumed = train(_cfg(tmp_path, micro_args, "part", **kw), resume=part, changes={"steps": 4})
    a = torch.load(whole / "checkpoints" / "final.pt", weights_only=True)["model"]
    b = torch.load(resumed / "checkpoints" / "final.pt", weights_only=True)["model"]
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_lora_merge_command(tmp_path, micro_args, base_run, capsys):
    from clipforge.cli.main import main

    run = train(_cfg(tmp_path, micro_args, init=str(base_run), lora_rank=2))
    out = tmp_path / "merged.pt"
    assert main(["lora", "merge", str(run), "--out", str(out)]) == 0
    merged = torch.load(out, weights_only=True)["model"]
    assert not any("lora" in k for k in merged)
    ref = load(run).state_dict()
    assert all(torch.equal(merged[k], ref[k]) for k in ref)
    assert main(["lora", "merge", str(run), "--out", str(out)]) == 2  # exists: --overwrite
    assert main(["lora", "merge", str(base_run), "--out", str(tmp_path / "x.pt")]) == 2
    assert "no LoRA adapters" in capsys.readouterr().err


# --- exact accumulation (gradient caching) -------------------------------------------

# Terms behind one entry of the loss or a gradient, summed along the chain
# (tests/tolerance.py): B samples x 24 tokens, MLP widths up to 4 x 32, the B x 2B logits;
# rounded up to 10^4, as in tests/train/test_distributed.py. The contrastive gradient is
# a difference of two softmax expectations, so terms may be 10^3 times the result.
TERMS, CANCEL = 10_000, 1_000


def _batch() -> Batch:
    return mixed_batch(hard=True)


# FILIP's score of a pair is built from all N x L token similarities (16 patches x 24
# tokens), and a gradient entry sums them over the B x B pairs: 12 x 12 x 16 x 24 = 55,296
# terms more along the chain, rounded up to 10^5 on top of TERMS.
FILIP_TERMS = TERMS + 100_000


def _grads(loss: str, accum: int, exact: bool, micro_args, dropout: float = 0.0, hard: bool = True):
    cfg = TrainConfig(
        model_args={**micro_args, "vision.stem": "patch"}, loss=loss, batch_size=B,
        accum_steps=accum, accum_exact=exact, precision="fp64", grad_clip=0.0,
        patch_dropout=dropout,
    )  # fmt: skip
    spec = get_loss(loss)
    torch.manual_seed(0)
    model = CLIP(get_model_config("tiny", cfg.model_args), spec.init_logit_scale,
                 spec.init_logit_bias).double()  # fmt: skip
    model.visual.patch_dropout = dropout
    model.train()
    objective = spec.build(cfg)
    trained = torch.nn.ModuleList([model, objective])
    opt = build_optimizer(trained, 0.0, 0.0, (0.9, 0.98), 1e-6)  # lr 0: grads stay readable
    torch.manual_seed(5)
    batch = mixed_batch(hard=hard)
    result = Stepper(cfg, World(), model, model, objective, opt)(batch, 0)
    return result.loss, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_exact_accumulation_equals_the_full_batch(loss, micro_args):
    ref_loss, ref = _grads(loss, 1, False, micro_args)
    got_loss, got = _grads(loss, 3, True, micro_args)
    assert got_loss == pytest.approx(
        ref_loss, rel=0, abs=reorder_bound(TERMS, CANCEL * (1 + abs(ref_loss)), torch.float64)
    )
    for name, g in ref.items():
        tol = reorder_bound(TERMS, CANCEL * (1 + float(g.abs().max())), torch.float64)
        assert float((got[name] - g).abs().max()) <= tol, name
    # Plain accumulation is not the full-batch gradient: the check can tell them apart.
    _, plain = _grads(loss, 3, False, micro_args)
    worst = max(float((plain[n] - g).abs().max()) for n, g in ref.items())
    assert worst > 1e6 * reorder_bound(TERMS, CANCEL, torch.float64)


def test_exact_accumulation_of_token_level_filip_equals_the_full_batch(micro_args):
    # clip+filip reads per-token features as well as the pooled embeddings: gradient
    # caching caches and differentiates both. FILIP takes one caption per image, so the
    # batch has no hard negatives.
    ref_loss, ref = _grads("clip+filip", 1, False, micro_args, hard=False)
    got_loss, got = _grads("clip+filip", 3, True, micro_args, hard=False)
    assert got_loss == pytest.approx(
        ref_loss, rel=0,
        abs=reorder_bound(FILIP_TERMS, CANCEL * (1 + abs(ref_loss)), torch.float64),
    )  # fmt: skip
    for name, g in ref.items():
        tol = reorder_bound(FILIP_TERMS, CANCEL * (1 + float(g.abs().max())), torch.float64)
        assert float((got[name] - g).abs().max()) <= tol, name
    _, plain = _grads("clip+filip", 3, False, micro_args, hard=False)
    worst = max(float((plain[n] - g).abs().max()) for n, g in ref.items())
    assert worst > 1e6 * reorder_bound(FILIP_TERMS, CANCEL, torch.float64)


def test_exact_accumulation_replays_patch_dropout(micro_args):
    # Patch dropout draws per forward; the cached pass and the gradient pass must drop the
    # same patches, or the gradients would belong to another forward than the loss. With
    # the draws replayed, two runs from the same RNG state agree with each other exactly.
    a_loss, a = _grads("clip", 3, True, micro_args, dropout=0.5)
    b_loss, b = _grads("clip", 3, True, micro_args, dropout=0.5)
    assert a_loss == b_loss and all(torch.equal(a[n], b[n]) for n in a)
    ref_loss, _ = _grads("clip", 3, True, micro_args)
    assert a_loss != ref_loss


def test_exact_accumulation_refusals(tmp_path, micro_args):
    with pytest.raises(ClipforgeError, match="--accum-steps of 2"):
        train(_cfg(tmp_path, micro_args, accum_exact=True))
    with pytest.raises(ClipforgeError, match="objective of the embeddings alone"):
        train(_cfg(tmp_path, micro_args, accum_exact=True, accum_steps=2, loss="distill",
                   loss_options=replace(TrainConfig().loss_options, teacher="ema")))  # fmt: skip
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("loss", ["clip", "clip+filip"])
def test_exact_accumulation_trains(tmp_path, micro_args, loss):
    run = train(_cfg(tmp_path, micro_args, accum_exact=True, accum_steps=2, loss=loss))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss"] > 0 for r in rows if "loss" in r)


# --- patch dropout --------------------------------------------------------------------


def test_patch_dropout_trains_on_fewer_tokens_and_evaluates_on_all(micro_args):
    torch.manual_seed(0)
    model = CLIP(get_model_config("tiny", micro_args))
    images = torch.randn(4, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        plain = model.encode_image(images)
        model.visual.patch_dropout = 0.5
        assert torch.equal(model.encode_image(images), plain)  # eval: every patch
        model.train()
        n = model.visual.tokens(images).shape[1]
    # The class token and half of the 16 patches (16 px / 4).
    assert n == 1 + 8
    with torch.no_grad():
        assert not torch.allclose(model.encode_image(images), model.encode_image(images))


def test_patch_dropout_refused_with_grid_pooling(tmp_path, micro_args):
    with pytest.raises(ClipforgeError, match="vision.pool=grid"):
        train(_cfg(tmp_path, {**micro_args, "vision.pool": "grid"}, patch_dropout=0.5))


# --- layer-wise learning-rate decay, gradient checkpointing ---------------------------


def test_layer_decay_scales_each_block(micro_args):
    from clipforge.train.optim import param_groups

    model = CLIP(get_model_config("tiny", {**micro_args, "vision.layers": 3}))
    scale = {}
    for g in param_groups(torch.nn.ModuleList([model]), 0.05, layer_decay=0.5):
        for p in g["params"]:
            scale[id(p)] = g["lr_scale"]
    named = dict(model.named_parameters())
    # Image tower of 3 blocks: block 2 is the top (0.5^1), block 0 0.5^3, embeddings 0.5^4.
    assert scale[id(named["visual.transformer.blocks.2.mlp.fc1.weight"])] == 0.5
    assert scale[id(named["visual.transformer.blocks.0.attn.qkv.weight"])] == 0.125
    assert scale[id(named["visual.pos_embed"])] == 0.0625
    assert scale[id(named["text.transformer.blocks.0.norm1.weight"])] == 0.5
    assert scale[id(named["text.token_embed.weight"])] == 0.25
    for head in ("visual.proj.weight", "text.proj.weight", "logit_scale"):
        assert scale[id(named[head])] == 1.0
    # Off: the two groups of before (older checkpoints' optimizer state still loads).
    assert len(param_groups(model, 0.05)) == 2


def test_layer_decay_run_uses_the_scaled_rates(tmp_path, micro_args, monkeypatch):
    seen = _capture(monkeypatch)
    train(_cfg(tmp_path, micro_args, lr_layer_decay=0.5, steps=2, warmup=1))
    rates = {g["lr"] / g["lr_scale"] for g in seen["opt"].param_groups}
    assert len(rates) == 1  # every group at the schedule's rate times its factor
    assert {g["lr_scale"] for g in seen["opt"].param_groups} == {1.0, 0.5, 0.25}


def test_gradient_checkpointing_gives_the_same_gradients(micro_args):
    grads = []
    for on in (False, True):
        torch.manual_seed(0)
        model = CLIP(get_model_config("tiny", micro_args)).train()
        for tower in (model.visual, model.text):
            tower.transformer.checkpointing = on
        b = _batch()
        out = model(b.images, b.tokens[:B])
        (out.image * out.text).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    # The recomputation runs the same kernels on the same inputs: bit for bit.
    for n, g in grads[0].items():
        assert (g is None and grads[1][n] is None) or torch.equal(g, grads[1][n]), n


def test_tensorboard_mirrors_the_metrics_log(tmp_path, micro_args):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(_cfg(tmp_path, micro_args, log="tensorboard", evals="zeroshot,retrieval",
                     eval_per_class=1, eval_pairs=20))  # fmt: skip
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    losses = [(e.step, e.value) for e in events.Scalars("loss")]
    want = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    assert [s for s, _ in losses] == [s for s, _ in want]
    # Event files store float32.
    assert all(v == pytest.approx(w, rel=1e-6) for (_, v), (_, w) in zip(losses, want, strict=True))
    assert "test/zeroshot/top1" in events.Tags()["scalars"]
    with pytest.raises(ClipforgeError, match="unknown --log"):
        train(_cfg(tmp_path, micro_args, "bad", log="wandb"))


def test_weight_ema_follows_the_recurrence(micro_args):
    from clipforge.train.ema import WeightEMA

    torch.manual_seed(0)
    model = CLIP(get_model_config("tiny", micro_args))
    ema = WeightEMA(model, 0.9)
    want = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model)
        for k, v in model.state_dict().items():
            want[k] = 0.9 * want[k] + (1 - 0.9) * v if v.is_floating_point() else v.clone()
    # d * a + (1 - d) * v: two products and a sum; the in-place form may fuse the last
    # product into the sum, so allow the rounding of a two-term sum (tests/tolerance.py).
    for k, w in want.items():
        if not w.is_floating_point():
            assert torch.equal(ema.state[k], w), k
            continue
        tol = reorder_bound(2, 2 * float(w.abs().max()))
        assert float((ema.state[k] - w).abs().max()) <= tol, k


def test_ema_checkpoint_and_resume(tmp_path, micro_args):
    # Steps 0 and 1 have the same learning rate under a 2- and a 4-step schedule (warm-up
    # 1), so the resumed run must equal the whole one bit for bit.
    kw = dict(ema_decay=0.5, steps=4, ckpt_every=2)
    whole = train(_cfg(tmp_path, micro_args, "whole", **kw))
    part = train(_cfg(tmp_path, micro_args, "part", **{**kw, "steps": 2}))
    resumed = train(_cfg(tmp_path, micro_args, "part", **kw), resume=part, changes={"steps": 4})
    a, b = load(whole / "checkpoints" / "ema.pt"), load(resumed / "checkpoints" / "ema.pt")
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    final = load(whole).state_dict()
    assert not torch.equal(sa["text.proj.weight"], final["text.proj.weight"])


def test_fine_tuning_flags_on_the_command_line(capsys):
    from clipforge.cli.main import build_parser, main

    args = build_parser().parse_args(
        ["train", "--lock-image", "true", "--lock-image-unlocked-layers", "2",
         "--lora-targets", "qkv,fc1", "--accum-exact", "true", "--patch-dropout", "0.5",
         "--lr-layer-decay", "0.75", "--ema-decay", "0.999", "--log", "tensorboard"]
    )  # fmt: skip
    from clipforge.config import resolve

    given = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    cfg = resolve(TrainConfig, None, given)
    assert cfg.lock_image is True and cfg.lock_image_unlocked_layers == 2
    assert cfg.accum_exact is True and cfg.lora_targets == "qkv,fc1"
    assert cfg.patch_dropout == 0.5 and cfg.lr_layer_decay == 0.75 and cfg.ema_decay == 0.999
    assert main(["train", "--patch-dropout", "1"]) == 2
    assert "--patch-dropout: must be a number in [0, 1), got 1" in capsys.readouterr().err
    assert main(["train", "--lora-rank", "-1"]) == 2
    assert "--lora-rank: must be an integer >= 0" in capsys.readouterr().err
