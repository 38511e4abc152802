"""Checkpoints are read without running code from them."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from clipforge.errors import ClipforgeError
from clipforge.models import load

open_clip = pytest.importorskip("open_clip")


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _micro_openclip():
    vision = open_clip.model.CLIPVisionCfg(layers=1, width=64, patch_size=8, image_size=16)
    text = open_clip.model.CLIPTextCfg(
        context_length=8, vocab_size=100, width=64, heads=1, layers=1
    )
    return open_clip.model.CLIP(16, vision, text, quick_gelu=True).eval()


def test_the_payload_is_live(tmp_path: Path) -> None:
    # Without this the other tests could pass with a payload that never worked.
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


def test_pickled_state_dict_with_payload_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    sd = dict(_micro_openclip().state_dict())
    sd["visual.proj"] = Payload(marker)  # type: ignore[assignment]
    path = tmp_path / "evil.pt"
    torch.save(sd, path)
    with pytest.raises(ClipforgeError) as e:
        load(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"refusing to load {path}: its pickle imports ")
    assert "system" in msg
    assert not marker.exists()


def test_hf_folder_with_payload_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    (tmp_path / "config.json").write_text('{"model_type": "clip"}')
    torch.save({"logit_scale": Payload(marker)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ClipforgeError, match=r"refusing to load .*pytorch_model\.bin"):
        load(tmp_path)
    assert not marker.exists()


def _rewrite_zip(src: Path, dst: Path, replace: dict[str, bytes | None]) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            if item.filename in replace:
                data = replace[item.filename]
                if data is not None:
                    zout.writestr(item.filename, data)
            else:
                zout.writestr(item, zin.read(item.filename))


@pytest.fixture(scope="module")
def torchscript_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = _micro_openclip()
    model.attn_mask = model._buffers.pop("attn_mask")  # as in OpenAI's archives
    path = tmp_path_factory.mktemp("ts") / "clip.pt"
    torch.jit.script(model).save(str(path))
    return path


def test_torchscript_with_payload_is_refused(tmp_path: Path, torchscript_archive: Path) -> None:
    marker = tmp_path / "ran"
    with zipfile.ZipFile(torchscript_archive) as z:
        data_pkl = next(n for n in z.namelist() if n.endswith("/data.pkl"))
    evil = tmp_path / "evil.pt"
    _rewrite_zip(torchscript_archive, evil, {data_pkl: pickle.dumps(Payload(marker), protocol=2)})
    with pytest.raises(ClipforgeError) as e:
        load(evil)
    msg = str(e.value)
    assert msg.startswith(f"refusing to load {evil}: its pickle imports ")
    assert "system" in msg and "\n" not in msg
    assert not marker.exists()


def test_torchscript_code_is_not_needed(tmp_path: Path, torchscript_archive: Path) -> None:
    # The reader uses data.pkl and the tensor records only: without the archive's
    # TorchScript code the weights still load, to the same values.
    with zipfile.ZipFile(torchscript_archive) as z:
        code = {n: None for n in z.namelist() if "/code/" in n}
    assert code
    stripped = tmp_path / "no_code.pt"
    _rewrite_zip(torchscript_archive, stripped, code)
    a = load(torchscript_archive).state_dict()
    b = load(stripped).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
