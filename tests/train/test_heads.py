"""Heads an objective trains beside the towers (``--loss clip+coca``'s caption decoder)
survive every path that writes a model: ``ema.pt``, ``--init``, ``clipforge convert``,
``wise``, ``stretch``, ``upcycle``; where a format has no place for them they are
refused in one line unless ``--drop-heads``."""

import pytest
import torch
from torch import nn

from clipforge.cli.main import main
from clipforge.config import from_dict
from clipforge.errors import ClipforgeError
from clipforge.models import load, save_checkpoint
from clipforge.train import TrainConfig, train
from clipforge.train import trainer as trainer_module
from clipforge.train.ema import WeightEMA
from tests.conftest import MICRO_ARGS

# A patch stem (no batch norm), which OpenCLIP's format can hold.
ARGS = {**MICRO_ARGS, "vision.stem": "patch"}


def _cfg(out, **kw) -> TrainConfig:
    fields = dict(
        model_args=ARGS, loss="clip+coca", batch_size=8, steps=2, warmup=1,
        eval_every=0, evals="none", threads=1, progress=False, out=str(out),
    )  # fmt: skip
    fields.update(kw)
    return from_dict(TrainConfig, fields)


@pytest.fixture(scope="module")
def coca_run(tmp_path_factory):
    return train(_cfg(tmp_path_factory.mktemp("coca") / "run", ema_decay=0.5))


def _equal_states(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_weight_ema_averages_the_heads():
    model, head = nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
        head.weight.fill_(1.0)
    ema = WeightEMA(model, 0.5, {"decoder": head})
    with torch.no_grad():
        model.weight.fill_(3.0)
        head.weight.fill_(5.0)
    ema.update(model)
    # 0.5 x 1 + 0.5 x 3 and 0.5 x 1 + 0.5 x 5: dyadic numbers, computed exactly.
    assert torch.equal(ema.model_state()["weight"], torch.full((2, 2), 2.0))
    assert torch.equal(ema.head_states()["decoder"]["weight"], torch.full((1, 2), 3.0))
    assert set(ema.model_state()) == {"weight"}


def test_ema_checkpoint_holds_the_averaged_decoder(coca_run):
    final = load(coca_run).heads["decoder"]
    averaged = load(coca_run / "checkpoints" / "ema.pt").heads["decoder"]
    assert averaged.cfg == final.cfg and torch.equal(averaged.ids, final.ids)
    # Two steps at decay 0.5 from the initial weights: an average, not the final weights.
    assert not torch.equal(averaged.token_embed.weight, final.token_embed.weight)


def test_convert_keeps_the_decoder_or_refuses(coca_run, tmp_path, capsys):
    src = coca_run / "checkpoints" / "final.pt"
    out = tmp_path / "copy.pt"
    assert main(["convert", str(src), str(out), "--to", "clipforge"]) == 0
    assert _equal_states(load(out).heads["decoder"], load(coca_run).heads["decoder"])
    # OpenCLIP has no place for a decoder: refused, unless the towers alone are wanted.
    capsys.readouterr()
    assert main(["convert", str(src), str(tmp_path / "oc"), "--to", "openclip"]) == 2
    err = capsys.readouterr().err
    assert "decoder head" in err and "--drop-heads" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "oc").exists()
    towers = tmp_path / "towers.pt"
    assert main(["convert", str(src), str(towers), "--to", "clipforge", "--drop-heads"]) == 0
    assert load(towers).heads == {}
    assert main(["convert", str(src), str(tmp_path / "oc"), "--to", "openclip",
                 "--drop-heads"]) == 0  # fmt: skip


def test_init_starts_the_decoder_from_the_checkpoint(coca_run, tmp_path, monkeypatch, capsys):
    seen: dict = {}
    real = trainer_module.build_optimizer

    def spy(trained, *a, **kw):  # the objective as the first step will see it
        seen["decoder"] = {
            k: v.clone() for k, v in trained[1].heads()["decoder"].state_dict().items()
        }
        return real(trained, *a, **kw)

    monkeypatch.setattr(trainer_module, "build_optimizer", spy)
    run = train(_cfg(tmp_path / "ft", init=str(coca_run)))
    monkeypatch.undo()
    start = load(coca_run).heads["decoder"].state_dict()
    assert seen["decoder"].keys() == start.keys()
    assert all(torch.equal(seen["decoder"][k], v) for k, v in start.items())
    assert "decoder" in load(run).heads

    # A run that does not train the decoder says that it leaves it out.
    capsys.readouterr()
    plain = train(_cfg(tmp_path / "plain", loss="clip", init=str(coca_run)))
    err = capsys.readouterr().err
    assert "decoder head is not trained" in err and load(plain).heads == {}

    # A decoder of another architecture cannot take the checkpoint's weights.
    other = _cfg(tmp_path / "bad", init=str(coca_run), loss_options={"coca_layers": 1})
    with pytest.raises(ClipforgeError, match="--coca-"):
        train(other)
    assert not (tmp_path / "bad").exists()


def test_wise_stretch_and_upcycle_keep_the_decoder(coca_run, tmp_path, capsys):
    decoder = load(coca_run).heads["decoder"]
    half = tmp_path / "half.pt"
    assert main(["wise", str(coca_run), str(coca_run), "--alpha", "0.5", "--out", str(half)]) == 0
    # 0.5 x + 0.5 x is x exactly (halving is exact, the sum of two halves rounds to x).
    assert _equal_states(load(half).heads["decoder"], decoder)

    plain = tmp_path / "plain.pt"
    save_checkpoint(load(coca_run), plain, "clipforge", drop_heads=True)
    capsys.readouterr()
    assert main(["wise", str(plain), str(coca_run), "--out", str(tmp_path / "w.pt")]) == 2
    assert "only one of the models has a decoder head" in capsys.readouterr().err
    assert main(["wise", str(plain), str(coca_run), "--out", str(tmp_path / "w.pt"),
                 "--drop-heads"]) == 0  # fmt: skip
    assert load(tmp_path / "w.pt").heads == {}

    for cmd in (["stretch", "--context", "48", "--keep", "8"], ["upcycle", "--experts", "2"]):
        out = tmp_path / f"{cmd[0]}.pt"
        assert main([cmd[0], str(coca_run), *cmd[1:], "--out", str(out)]) == 0
        assert _equal_states(load(out).heads["decoder"], decoder), cmd[0]
