"""Writers: round trips through the readers, keys, atomic shards."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from clipforge.data.readers import ManifestDataset, ShardDataset, open_dataset
from clipforge.data.sample import Sample
from clipforge.data.writers import write_manifest, write_shards
from clipforge.errors import ClipforgeError


def _image(seed: int) -> Image.Image:
    """A 16x16 image of random colours: a background and a rectangle."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (16, 16), tuple(int(c) for c in rng.integers(0, 256, 3)))
    x0, y0 = (int(v) for v in rng.integers(0, 8, 2))
    ImageDraw.Draw(image).rectangle(
        (x0, y0, x0 + 7, y0 + 7), fill=tuple(int(c) for c in rng.integers(0, 256, 3))
    )
    return image


def _samples(n: int = 20) -> list[Sample]:
    out = []
    for i in range(n):
        texts = [f"sample {i}, a photo", 'with "quotes" and ünïcode'][: 1 + i % 2]
        if i % 5 == 0:
            texts.append("a third caption")
        meta = {"index": i, "box": [i, i + 1, 2.5, None], "tags": {"split": "train"}}
        out.append(Sample(image=_image(i), texts=texts, meta=meta, key=f"s{i:03d}"))
    return out


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_manifest_round_trip(tmp_path: Path, fmt: str) -> None:
    samples = _samples(20)
    path = write_manifest(samples, tmp_path, fmt=fmt)
    assert path == tmp_path / f"train.{fmt}"
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [
        f"s{i:03d}.png" for i in range(20)
    ]
    assert not list(tmp_path.glob(".*.tmp"))
    ds = open_dataset(path)
    assert isinstance(ds, ManifestDataset) and len(ds) == 20
    for i, original in enumerate(samples):
        loaded = ds.load(i)
        assert loaded.texts == original.texts
        assert loaded.meta == original.meta
        assert loaded.key == f"images/s{i:03d}.png"
        assert np.array_equal(_pixels(loaded.image), _pixels(original.image))


def test_csv_manifest_columns(tmp_path: Path) -> None:
    path = write_manifest(_samples(2), tmp_path, fmt="csv", name="val")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert path.name == "val.csv"
    assert lines[0] == "image,caption,captions,meta"
    assert lines[1].startswith('images/s000.png,"sample 0, a photo",')


def test_jsonl_manifest_fields(tmp_path: Path) -> None:
    path = write_manifest(_samples(2), tmp_path, fmt="jsonl", image_format="jpg")
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert first["image"] == "images/s000.jpg"
    assert first["caption"] == "sample 0, a photo"
    assert first["captions"] == ["sample 0, a photo", "a third caption"]
    assert first["meta"]["index"] == 0


def test_shard_round_trip(tmp_path: Path) -> None:
    samples = _samples(20)
    paths = write_shards(samples, tmp_path, shard_size=8)
    assert paths == [tmp_path / f"train-{i:06d}.tar" for i in range(3)]
    assert sorted(tmp_path.iterdir()) == paths  # no temporary files left behind
    with tarfile.open(paths[0]) as tf:
        assert tf.getnames()[:3] == ["s000.jpg", "s000.txt", "s000.json"]
    counts = [ShardDataset(str(p)).count_samples() for p in paths]
    assert counts == [8, 8, 4]

    ds = ShardDataset(f"{tmp_path}/train-{{000000..000002}}.tar")
    assert ds.count_samples() == 20
    items = list(ds.iter_samples())
    assert len(items) == 20
    for original, loaded in zip(samples, items, strict=True):
        assert isinstance(loaded, Sample)
        assert loaded.key == original.key
        assert loaded.texts == original.texts
        assert loaded.meta == original.meta
        diff = np.abs(_pixels(loaded.image) - _pixels(original.image)).mean()
        assert diff < 8, (original.key, diff)
    resumed = list(ds.iter_samples(start=10))
    assert [x.key for x in resumed] == [f"s{i:03d}" for i in range(10, 20)]


def test_png_shards_are_lossless(tmp_path: Path) -> None:
    samples = _samples(5)
    write_shards(samples, tmp_path, shard_size=100, image_format="png", name="val")
    (shard,) = sorted(tmp_path.glob("*.tar"))
    assert shard.name == "val-000000.tar"
    items = list(ShardDataset(str(shard)).iter_samples())
    for original, loaded in zip(samples, items, strict=True):
        assert isinstance(loaded, Sample)
        assert np.array_equal(_pixels(loaded.image), _pixels(original.image))


def test_keys_are_made_safe_and_unique(tmp_path: Path) -> None:
    keys = ["a.b", "a_b", "dir/x.y.z", "", "", "a.b"]
    samples = [Sample(_image(i), [f"t{i}"], {}, key) for i, key in enumerate(keys)]
    write_shards(samples, tmp_path / "shards")
    items = list(open_dataset(tmp_path / "shards").iter_samples())  # type: ignore[union-attr]
    got = [x.key for x in items]
    assert got == ["a_b", "a_b_00000001", "dir_x_y_z", "00000003", "00000004", "a_b_00000005"]
    assert [x.texts for x in items] == [[f"t{i}"] for i in range(6)]

    manifest = write_manifest(samples, tmp_path / "manifest")
    ds = ManifestDataset(manifest)
    assert [ds.load(i).key for i in range(len(ds))] == [f"images/{k}.png" for k in got]


def test_multiline_captions_and_non_rgb_images(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    samples = [Sample(rgba, ["line one\nline two", "second"], {"n": np.int64(3)}, "m")]
    write_shards(samples, tmp_path, image_format="jpg")
    (item,) = list(ShardDataset(str(tmp_path / "train-000000.tar")).iter_samples())
    assert isinstance(item, Sample)
    assert item.texts == ["line one line two", "second"]  # one caption per line in .txt
    assert item.meta == {"n": 3}  # numpy scalars stored as numbers
    assert np.abs(_pixels(item.image) - 255).max() <= 2  # transparent -> white, then JPEG


def test_reserved_captions_meta_aborts_without_partial_shard(tmp_path: Path) -> None:
    samples = _samples(5)
    samples[3].meta["captions"] = ["clash"]
    with pytest.raises(ClipforgeError, match="'captions'"):
        write_shards(samples, tmp_path, shard_size=2)
    # The first complete shard stays; the half-written one never appears under a .tar name.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-000000.tar"]


def test_failure_mid_stream_leaves_only_complete_files(tmp_path: Path) -> None:
    def stream() -> Iterator[Sample]:
        yield from _samples(3)
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError):
        write_shards(stream(), tmp_path / "s", shard_size=2)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["train-000000.tar"]
    with pytest.raises(RuntimeError):
        write_manifest(stream(), tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["images"]


def test_empty_input_and_bad_arguments(tmp_path: Path) -> None:
    assert write_shards([], tmp_path / "s") == []
    manifest = write_manifest([], tmp_path / "m", fmt="jsonl")
    assert len(ManifestDataset(manifest)) == 0
    with pytest.raises(ClipforgeError, match="manifest format 'parquet'"):
        write_manifest(_samples(1), tmp_path, fmt="parquet")
    with pytest.raises(ClipforgeError, match="image format 'bmpx'"):
        write_shards(_samples(1), tmp_path, image_format="bmpx")
    with pytest.raises(ValueError, match="shard_size"):
        write_shards(_samples(1), tmp_path, shard_size=0)
    with pytest.raises(TypeError, match="s000"):
        write_manifest([Sample(_image(0), ["x"], {"f": object()}, "s000")], tmp_path / "o")


def test_progress_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_shards(_samples(3), tmp_path, progress=True)
    assert "3/3" in capsys.readouterr().err
    write_manifest(_samples(3), tmp_path, progress=False)
    assert capsys.readouterr().err == ""
