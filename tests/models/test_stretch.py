"""Long-CLIP position stretching."""

import torch

from clipforge.cli.main import main
from clipforge.data.tokenizer import get_tokenizer
from clipforge.models import create_model, load, save_checkpoint
from clipforge.models.stretch import stretch_positions


def test_stretch_keeps_the_first_positions_and_interpolates_the_rest(micro_args):
    torch.manual_seed(0)
    model = create_model("tiny", {**micro_args, "text.context_length": 24})
    old = model.text.pos_embed.detach()
    new = stretch_positions(model, context=20 + 4 * 4, keep=20).text.pos_embed.detach()
    assert new.shape == (36, old.shape[1])
    assert torch.equal(new[:20], old[:20])
    for i in range(4):  # every 4th stretched position is an old one, exactly
        assert torch.equal(new[20 + 4 * i], old[20 + i])
    # Midway between two old positions: their mean (one rounding of each of the steps).
    mid = old[21] + 0.5 * (old[22] - old[21])
    assert torch.equal(new[20 + 4 * 1 + 2], mid)
    # Past the last old position the last step goes on.
    assert torch.allclose(new[-1], old[-1] + 0.75 * (old[-1] - old[-2]), atol=1e-7)


def test_stretch_command(tmp_path, micro_args, capsys):
    src = tmp_path / "m.pt"
    save_checkpoint(create_model("tiny", dict(micro_args)), src, "clipforge")
    out = tmp_path / "long.pt"
    assert main(["stretch", str(src), "--context", "60", "--keep", "8", "--out", str(out)]) == 0
    model = load(out)
    assert model.cfg.text.context_length == 60
    # A caption longer than the old 24-token context is embedded whole.
    tokens = get_tokenizer(60)(["a small red circle " * 8])
    assert int(tokens.argmax()) > 24
    assert model.encode_text(tokens).shape == (1, micro_args["embed_dim"])
    assert main(["stretch", str(src), "--context", "20", "--out", str(tmp_path / "x.pt")]) == 2
    assert "must exceed the model's context 24" in capsys.readouterr().err
