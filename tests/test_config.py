import pytest

from clipforge.config import from_dict, load_yaml, resolve
from clipforge.errors import ClipforgeError
from clipforge.train.config import TrainConfig


def test_yaml_then_cli_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("loss: siglip\nbatch_size: 64\nmodel_args: {vision.width: 64}\n")
    cfg = resolve(TrainConfig, str(p), {"batch_size": "256", "steps": "2000"})
    assert cfg.loss == "siglip" and cfg.batch_size == 256 and cfg.steps == 2000
    assert cfg.model_args == {"vision.width": 64}
    assert cfg.lr == TrainConfig().lr


def test_cli_string_parsing():
    cfg = from_dict(
        TrainConfig,
        {
            "flip": "true",
            "lr": "3e-4",
            "data": "none",
            "model_args": "vision.width=64,text.layers=2",
        },
    )
    assert cfg.flip is True and cfg.lr == 3e-4 and cfg.data is None
    assert cfg.model_args == {"vision.width": 64, "text.layers": 2}


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ClipforgeError, match="unknown field.*batchsize"):
        from_dict(TrainConfig, {"batchsize": 3})
    with pytest.raises(ClipforgeError, match="^--steps: must be an integer >= 1, got 'many'$"):
        from_dict(TrainConfig, {"steps": "many"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss: clip\nsteps: [1,\n")
    with pytest.raises(ClipforgeError, match=r"bad.yaml:\d+: malformed YAML"):
        load_yaml(bad)
    with pytest.raises(ClipforgeError, match="config file not found"):
        load_yaml(tmp_path / "missing.yaml")


def test_parse_kv_keeps_bracketed_lists():
    from clipforge.config import parse_kv

    assert parse_kv("w=[0.2,0.8],g=0.5", "x") == {"w": [0.2, 0.8], "g": 0.5}
