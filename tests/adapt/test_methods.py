"""The math of every adaptation method on tiny hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch

from clipforge.adapt import METHODS, Shots, fit_shots
from clipforge.adapt.base import carve_validation, draw_shots, select
from clipforge.adapt.gda import gda_classifier
from clipforge.adapt.tip import cache_logits
from clipforge.adapt.zeroshot import described_prompts
from clipforge.errors import ClipforgeError
from tests.tolerance import reorder_bound

# Sums of a handful of float32 products of unit-size numbers: rounding stays below
# 1e-6 relative (a few ulps of 2^-24 each), so 1e-5 leaves an order of magnitude.
TOL = 1e-5


def _shots(x, y, text, scale=10.0, val=()):
    y = torch.as_tensor(y)
    val = torch.as_tensor(val, dtype=torch.long)
    train = torch.tensor([i for i in range(len(y)) if i not in set(val.tolist())])
    return Shots(torch.as_tensor(x, dtype=torch.float32), y, train, val,
                 torch.as_tensor(text, dtype=torch.float32), scale, ["a", "b"])  # fmt: skip


def test_zeroshot_is_scaled_cosine_to_the_text_classifier():
    s = _shots([[1.0, 0.0]], [0], [[1.0, 0.0], [0.0, 1.0]], scale=10.0)
    a = fit_shots("zeroshot", s)
    out = a.logits(torch.tensor([[0.6, 0.8]]))
    assert torch.allclose(out, torch.tensor([[6.0, 8.0]]), atol=TOL)


def test_described_prompts_keep_the_plain_templates_and_add_each_description():
    got = described_prompts("cat", ["a photo of a {}.", "one {}"], ["whiskers"])
    assert got == ["a photo of a cat.", "one cat", "a photo of a cat, which has whiskers",
                   "one cat, which has whiskers"]  # fmt: skip


def test_gda_matches_the_hand_computed_shared_covariance_classifier():
    # Class 0 at (1, 0) +- (0, 1); class 1 at (-1, 0) +- (0, 1): N = 4, D = 2.
    x = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    y = torch.tensor([0, 0, 1, 1])
    t = gda_classifier(x, y, 2)
    # Scatter: four (0, +-1) deviations -> S = diag(0, 4/3), tr S = 4/3, so
    # (N-1) S + tr S I = diag(4/3, 4 + 4/3) and P = D times its inverse, D = 2.
    p = 2 * torch.diag(torch.tensor([1 / (4 / 3), 1 / (4 + 4 / 3)]))
    mu = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    w = mu @ p
    b = math.log(0.5) - 0.5 * (w * mu).sum(dim=1)
    assert torch.allclose(t["weight"], w, atol=TOL)
    assert torch.allclose(t["bias"], b.float(), atol=TOL)


def test_gda_ensembles_with_zero_shot_by_alpha():
    x = [[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]]
    s = _shots(x, [0, 1, 0, 1], [[0.0, 1.0], [1.0, 0.0]])  # zero-shot is exactly wrong
    a = fit_shots("gda", s, alpha=0.0)  # no validation: the option's alpha
    assert a.params["selection"].startswith("defaults")
    q = torch.tensor([[1.0, 0.0]])
    assert torch.allclose(a.logits(q), 10.0 * q @ s.text.T, atol=TOL)
    b = fit_shots("gda", s, alpha=1.0)
    gda = q @ b.tensors["weight"].T + b.tensors["bias"]
    assert torch.allclose(b.logits(q), 10.0 * q @ s.text.T + gda, atol=TOL)


def test_tip_cache_is_affinity_weighted_votes():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    values = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    x = torch.tensor([[0.6, 0.8]])
    got = cache_logits(keys, values, x, beta=2.0)
    want = torch.tensor([[math.exp(-2 * 0.4), math.exp(-2 * 0.2)]])
    assert torch.allclose(got, want, atol=TOL)
    s = _shots(keys, [0, 1], [[1.0, 0.0], [0.0, 1.0]])
    a = fit_shots("tip", s, alpha=3.0, beta=2.0)
    assert torch.allclose(a.logits(x), 10.0 * x @ s.text.T + 3.0 * want, atol=TOL)


def test_tip_f_moves_the_keys_and_keeps_everything_else():
    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(8, 4), dim=-1)
    y = torch.tensor([0, 1] * 4)
    s = _shots(x, y, torch.nn.functional.normalize(torch.randn(2, 4), dim=-1))
    a = fit_shots("tip_f", s, epochs=5, lr=1e-2)
    assert a.params["epochs"] == 5
    assert not torch.allclose(a.tensors["keys"], x)
    assert torch.equal(a.tensors["values"], torch.nn.functional.one_hot(y, 2).float())
    zero = fit_shots("tip_f", s, epochs=0)
    assert torch.equal(zero.tensors["keys"], x)  # no epochs: plain Tip-Adapter


def test_zslp_starts_at_zero_shot_and_learns_the_shots():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    s = _shots(x, [0, 1], [[0.0, 1.0], [1.0, 0.0]], scale=1.0)  # zero-shot is wrong
    assert torch.equal(fit_shots("zslp", s, epochs=0).tensors["weight"], s.text)
    a = fit_shots("zslp", s, epochs=300, lr=0.05)
    assert (a.logits(x).argmax(dim=1) == s.y).all()


def test_linear_probe_separates_the_shots():
    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    s = _shots(x, [0, 0, 1, 1], [[0.0, 1.0], [1.0, 0.0]])
    a = fit_shots("linear_probe", s, c=10.0)
    assert a.tensors["weight"].shape == (2, 2)
    assert (a.logits(x).argmax(dim=1) == s.y).all()


def test_shot_draw_and_validation_carve():
    labels = torch.tensor([0] * 10 + [1] * 10)
    idx = draw_shots(labels, 8, seed=3, classnames=["a", "b"])
    assert len(idx) == 16 and len(set(idx.tolist())) == 16
    assert torch.equal(idx, draw_shots(labels, 8, seed=3, classnames=["a", "b"]))
    assert not torch.equal(idx, draw_shots(labels, 8, seed=4, classnames=["a", "b"]))
    tr, va = carve_validation(labels[idx], seed=3)
    assert len(va) == 4 and len(tr) == 12  # a quarter of each class's 8 shots
    assert set(tr.tolist()).isdisjoint(va.tolist())
    tr1, va1 = carve_validation(torch.tensor([0, 1]), seed=0)
    assert len(va1) == 0 and len(tr1) == 2  # one shot: nothing to validate on


def test_select_breaks_ties_toward_the_first_grid_point():
    best, table = select([{"a": 1}, {"a": 2}, {"a": 3}], lambda p: 0.5 if p["a"] > 1 else 0.1)
    assert best == {"a": 2} and [s for _, s in table] == [0.1, 0.5, 0.5]


def test_every_method_is_registered_with_a_summary():
    assert {"zeroshot", "linear_probe", "zslp", "gda", "tip", "tip_f"} <= set(METHODS.names())
    assert all(METHODS.get(m).summary for m in METHODS.names())


def test_coop_prompt_with_the_initial_context_is_the_plain_prompt(micro_args):
    """With 4 context vectors initialised to the embeddings of "a photo of a", the learned
    prompt's class embedding is the text tower's embedding of "a photo of a <c>."."""
    from clipforge.adapt.coop import PromptLearner
    from clipforge.data.tokenizer import get_tokenizer
    from clipforge.models import create_model

    torch.manual_seed(0)
    model = create_model("tiny", micro_args).eval()
    tok = get_tokenizer(model.cfg.text.context_length)
    learner = PromptLearner(model, tok, ["red hexagon", "pink circle"], 4, per_class=False)
    with torch.no_grad():
        got = learner.class_embeddings()
        want = model.encode_text(tok(["a photo of a red hexagon.", "a photo of a pink circle."]),
                                 normalize=True)  # fmt: skip
    assert torch.allclose(got, want, atol=TOL)
    csc = PromptLearner(model, tok, ["red hexagon", "pink circle"], 16, per_class=True)
    assert csc.ctx.shape == (2, 16, model.cfg.text.width)


def _prompt_shots(micro_args):
    """A random tiny model and six shots of three classes through its embedder: the
    prompt learners' fixture (their towers must come out of a fit unchanged)."""
    from clipforge.adapt import make_embedder
    from clipforge.models import create_model

    torch.manual_seed(0)
    model = create_model("tiny", micro_args)
    emb = make_embedder(model)
    x = torch.nn.functional.normalize(torch.randn(6, micro_args["embed_dim"]), dim=-1)
    y = torch.tensor([0, 1, 2] * 2)
    s = Shots(x, y, torch.arange(6), torch.tensor([], dtype=torch.long), torch.zeros(3, 32),
              10.0, ["red hexagon", "pink circle", "grey diamond"], 0, (), emb)  # fmt: skip
    return model, s


def test_coop_trains_the_context_only_and_leaves_the_towers_untouched(micro_args):
    from clipforge.eval.embed import model_fingerprint

    model, s = _prompt_shots(micro_args)
    x, y, before = s.x, s.y, model_fingerprint(model)
    a = fit_shots("coop", s, epochs=30, lr=0.05)
    assert model_fingerprint(model) == before == a.params["model_hash"]
    assert a.params["towers_unchanged"] is True
    assert all(p.requires_grad for p in model.parameters())  # restored after the fit
    assert accuracy_of(a, x, y) > 1 / 3  # it learned something of the shots
    assert a.tensors["ctx"].shape == (4, model.cfg.text.width)


def accuracy_of(a, x, y) -> float:
    return float((a.logits(x).argmax(dim=1) == y).float().mean())


def test_cocoop_with_a_zero_meta_net_is_coop_with_the_same_context(micro_args):
    """pi(x) = 0 for every image: each image's prompts are CoOp's, so the logits are
    scale * x T(v)^T with CoOp's class embeddings of the same context."""
    from clipforge.adapt.cocoop import conditional_logits, init_tensors, meta_bias
    from clipforge.adapt.coop import PromptLearner, coop_logits
    from clipforge.data.tokenizer import get_tokenizer
    from clipforge.models import create_model

    torch.manual_seed(0)
    model = create_model("tiny", micro_args).eval()
    tok = get_tokenizer(model.cfg.text.context_length)
    names = ["red hexagon", "pink circle", "grey diamond"]
    learner = PromptLearner(model, tok, names, 4, per_class=False)
    with torch.no_grad():
        learner.ctx.add_(0.1 * torch.randn_like(learner.ctx))  # not the initial words
        t = init_tensors(learner, micro_args["embed_dim"], 4)
        t["meta.w1"].zero_(), t["meta.b1"].zero_()
        x = torch.nn.functional.normalize(torch.randn(5, micro_args["embed_dim"]), dim=-1)
        assert torch.equal(meta_bias(t, x), torch.zeros(5, model.cfg.text.width))
        got = conditional_logits(model.text, t, 10.0, x, chunk=2)  # chunks of 2, 2, 1
        want = coop_logits({"text": learner.class_embeddings()}, {"scale": 10.0}, x)
    # The prompts are the same numbers; the tower runs them in batches of 6 and 3 rows
    # instead of 3, which may sum in another order: each embedding entry is a chain of
    # about (width + mlp) * layers products of unit-size terms, and the logit a further
    # embed_dim-term dot product scaled by 10, so reorder_bound of those counts.
    w = model.cfg.text.width
    n = (w + int(model.cfg.text.mlp_ratio * w)) * model.cfg.text.layers + micro_args["embed_dim"]
    assert torch.allclose(got, want, atol=reorder_bound(n, 10.0), rtol=0)
    # The class-aware variant (TOMML's CTP) with a zero meta-net is CoOp too.
    aware = init_tensors(learner, micro_args["embed_dim"], 4, torch.eye(3, 32))
    with torch.no_grad():
        got_aware = conditional_logits(model.text, aware, 10.0, x, chunk=2)
    assert torch.allclose(got_aware, want, atol=reorder_bound(n, 10.0), rtol=0)
    # A non-zero meta-net output changes each image's prompts, so its logits (not a
    # constant: the tower's first LayerNorm would remove a shift equal in every channel).
    t["meta.b2"] += torch.randn(model.cfg.text.width)
    with torch.no_grad():
        assert not torch.allclose(conditional_logits(model.text, t, 10.0, x), want, atol=1e-3)


def test_cocoop_trains_context_and_meta_net_only(micro_args):
    from clipforge.eval.embed import model_fingerprint

    model, s = _prompt_shots(micro_args)
    x, y, before = s.x, s.y, model_fingerprint(model)
    aware = fit_shots("cocoop", s, steps=5, lr=0.05, batch=4, reduction=4, class_aware=True)
    assert torch.equal(aware.tensors["class_text"], s.text) and aware.params["class_aware"]
    a = fit_shots("cocoop", s, steps=30, lr=0.05, batch=4, reduction=4)
    assert "class_text" not in a.tensors
    assert model_fingerprint(model) == before == a.params["model_hash"]
    assert a.params["towers_unchanged"] is True
    assert all(p.requires_grad for p in model.parameters())  # restored after the fit
    assert a.tensors["meta.w2"].abs().sum() > 0  # the zero output layer was trained
    assert accuracy_of(a, x, y) > 1 / 3
    # Without its model the adapter refuses to score, even given features.
    from clipforge.adapt import Adapter

    bare = Adapter(a.method, a.tensors, a.params, a.info)
    with pytest.raises(ClipforgeError, match="load the adapter with its model"):
        bare.logits(x)


def test_clipn_score_is_the_yes_probability_weighted_by_the_no_prompts_agreeing():
    from clipforge.adapt.clipn import clipn_ood, clipn_score, no_probability, opposite_loss

    # One image, two classes: yes logits s = (2, 0), no logits r = (0, 0).
    s, r = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    sig2 = 1 / (1 + math.exp(-2))  # softmax(s)_0 = sigmoid(2); q_0 = sigmoid(-2) = 1 - sigmoid(2)
    assert torch.allclose(no_probability(s, r), torch.tensor([[1 - sig2, 0.5]]), atol=TOL)
    # sum_c p_c (1 - q_c) = sigmoid(2) * sigmoid(2) + (1 - sigmoid(2)) * 0.5
    want = sig2 * sig2 + (1 - sig2) * 0.5
    assert abs(float(clipn_score(s, r)[0]) - want) < TOL
    # A no prompt that fires on the predicted class lowers the score: r_0 = 4 -> q_0 = sigmoid(2).
    assert float(clipn_score(s, torch.tensor([[4.0, 0.0]]))[0]) < want - 0.3
    # The loss: BCE of q_0 against 0 (own class) plus of q_1 against 1 (the other class).
    loss = opposite_loss(s, r, torch.tensor([0]))
    want_loss = -math.log(1 - (1 - sig2)) - math.log(0.5)
    assert abs(float(loss) - want_loss) < TOL
    # The mcm score next to it is the evaluator's: max softmax of cosines / tau.
    t = {"text": torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "no": torch.tensor([[0.0, 1.0]] * 2)}
    got = clipn_ood(t, {"scale": 10.0, "tau": 1.0}, torch.tensor([[0.6, 0.8]]))
    assert abs(float(got["mcm"][0]) - math.exp(0.8) / (math.exp(0.6) + math.exp(0.8))) < TOL


def test_clipn_no_prompts_learn_to_refuse_the_other_classes(micro_args):
    from clipforge.adapt import make_embedder
    from clipforge.adapt.clipn import no_probability, opposite_loss
    from clipforge.eval.embed import model_fingerprint
    from clipforge.models import create_model

    torch.manual_seed(0)
    model = create_model("tiny", micro_args)
    emb = make_embedder(model)
    before = model_fingerprint(model)
    names = ["red hexagon", "pink circle", "grey diamond"]
    text = emb.classifier(names, ["a photo of a {}."])
    x = torch.nn.functional.normalize(torch.randn(6, micro_args["embed_dim"]), dim=-1)
    y = torch.tensor([0, 1, 2] * 2)
    s = Shots(x, y, torch.arange(6), torch.tensor([], dtype=torch.long), text, 10.0, names, 0,
              (), emb)  # fmt: skip
    a = fit_shots("clipn", s, epochs=100, lr=0.05, class_specific=True)
    untrained = fit_shots("clipn", s, epochs=0, class_specific=True)  # "a photo of no <c>."
    assert model_fingerprint(model) == before == a.params["model_hash"]
    assert a.tensors["ctx"].shape == (3, 4, model.cfg.text.width)
    yes = 10.0 * x @ text.T
    losses = [float(opposite_loss(yes, 10.0 * x @ b.tensors["no"].T, y)) for b in (untrained, a)]
    assert losses[1] < 0.7 * losses[0]
    q = no_probability(yes, 10.0 * x @ a.tensors["no"].T)
    own = torch.nn.functional.one_hot(y, 3).bool()
    # A random 1-layer tower cannot place every no prompt on the right side of all six
    # random shots; on average it says yes to the own class and no to the others.
    assert q[own].mean() < 0.5 < q[~own].mean()
    assert torch.equal(a.logits(x), 10.0 * x @ text.T)  # classification stays zero-shot
    assert set(a.ood_scores(x)) == {"mcm", "clipn"}


def test_caps_adds_a_centred_caption_cache_to_tip():
    from clipforge.adapt.caps import caps_logits, caption_cache_logits
    from clipforge.adapt.tip import tip_logits

    x = torch.tensor([[1.0, 0.0]])
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # caption 0 (class 0) matches the query
    values = torch.eye(2)
    # Cosines (1, 0), mean 0.5: exp(-2 (0.5 - 1)) = e, exp(-2 (0.5 - 0)) = 1/e.
    want = torch.tensor([[math.e, 1 / math.e]])
    assert torch.allclose(caption_cache_logits(g, values, x, 2.0), want, atol=TOL)
    t = {"text": torch.tensor([[0.0, 1.0], [1.0, 0.0]]), "keys": torch.tensor([[0.6, 0.8]] * 2),
         "values": values, "captions": g}  # fmt: skip
    p = {"scale": 10.0, "alpha": 1.0, "beta": 5.5, "beta_t": 2.0}
    tip = tip_logits(t, {**p, "gamma": 0.0}, x)
    assert torch.equal(caps_logits(t, {**p, "gamma": 0.0}, x), tip)  # gamma 0 is Tip
    assert torch.allclose(caps_logits(t, {**p, "gamma": 3.0}, x), tip + 3.0 * want, atol=1e-5)


def test_caps_refuses_shots_without_captions():
    s = _shots([[1.0, 0.0], [0.0, 1.0]], [0, 1], [[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ClipforgeError, match="caps needs a caption per training image"):
        fit_shots("caps", s)
