"""The issue's acceptance run: a folder of 2,000 shapes-world PNGs written by `clipforge
synth`, the quick-start model (`clipforge train` with its defaults, ~8 CPU minutes), and
`embed` + `index` + `search "a red circle"`: the top 5 are red circles, by their metadata.

Slow (it trains the model); the plumbing of the same commands is tested fast in
test_search.py with a random micro model, where no hit can be expected to be right.
"""

from __future__ import annotations

import json

import pytest

from clipforge.cli.main import main


def red_circle(hit: dict) -> bool:
    return any(o["shape"] == "circle" and o["colour"] == "red" for o in hit["objects"])


@pytest.mark.slow
def test_a_red_circle_query_returns_red_circles(tmp_path, capsys):
    run, data, emb, idx = (tmp_path / n for n in ("run", "photos", "emb", "idx"))
    assert main(["train", "--out", str(run), "--progress", "false"]) == 0
    assert main(["synth", "--out", str(data), "--n", "2000"]) == 0
    assert main(["embed", str(run), str(data), "--out", str(emb), "--progress", "false"]) == 0
    assert main(["index", str(emb), "--out", str(idx)]) == 0
    capsys.readouterr()
    assert main(["search", str(idx), "a red circle", "-k", "5", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [red_circle(h) for h in hits] == [True] * 5, [h["caption"] for h in hits]
