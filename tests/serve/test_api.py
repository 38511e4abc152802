"""`clipforge serve`'s API: every route, and a 4xx for every bad input, while it keeps serving."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

from clipforge.cli.main import main
from clipforge.errors import ClipforgeError
from clipforge.serve.app import MAX_UPLOAD_BYTES
from clipforge.serve.batching import Batcher


def png_of(searcher, item: int) -> bytes:
    return open(searcher.index.rows[item]["path"], "rb").read()


def test_text_search_returns_ranked_hits_with_rows(client, searcher):
    r = client.get("/api/search", params={"q": "a red circle", "k": 5})
    assert r.status_code == 200
    hits = r.json()["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    for h in hits:
        assert h["caption"] == searcher.index.rows[h["id"]]["caption"]


def test_caption_search_and_similar_items(client, searcher):
    caption = searcher.index.rows[3]["caption"]
    r = client.get("/api/search", params={"q": caption, "k": 1, "captions": True})
    assert r.json()["hits"][0]["caption"] == caption
    r = client.get("/api/search", params={"item": 3, "k": 1})
    # Its own image is the best match up to the float16 rounding of the stored copy.
    assert r.json()["hits"][0]["score"] == pytest.approx(1.0, abs=1e-2)


def test_image_upload_search(client, searcher):
    r = client.post("/api/search", files={"image": ("q.png", png_of(searcher, 4))}, data={"k": "3"})
    assert r.status_code == 200 and len(r.json()["hits"]) == 3
    assert r.json()["hits"][0]["score"] == pytest.approx(1.0, abs=1e-2)


def test_embed_text_and_image(client, searcher):
    r = client.post("/api/embed", data={"text": "a red circle"})
    e = np.array(r.json()["embedding"])
    # Unit vector, entries rounded to 6 decimals: |norm - 1| <= 32 * 5e-7 (dim 32).
    assert r.json()["model"] == searcher.index.fingerprint and e.shape == (32,)
    assert abs(np.linalg.norm(e) - 1) <= 32 * 5e-7
    r = client.post("/api/embed", files={"image": ("q.png", png_of(searcher, 0))})
    assert len(r.json()["embedding"]) == 32


def test_thumbnails_page_health_and_metrics(client):
    r = client.get("/api/items/2")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size[0] <= 256
    page = client.get("/")
    assert page.status_code == 200 and 'id="q"' in page.text and 'id="drop"' in page.text
    assert client.get("/healthz").json()["rows"] == 96
    client.get("/api/search", params={"q": "x", "k": 0})
    m = client.get("/metrics").json()
    route = m["routes"]["GET /api/search"]
    assert route["requests"] >= 1 and route["by_status"].get("422", 0) >= 1
    assert route["p50_ms"] <= route["p99_ms"]
    assert m["encoder"]["texts"] >= 1


def test_thumbnails_and_similar_items_of_a_webdataset_collection(tmp_path, collection, monkeypatch):
    from fastapi.testclient import TestClient

    from clipforge.cli.collections import load_searcher
    from clipforge.index.search import IndexFolder
    from clipforge.serve.app import create_app

    _, model, _, data, _, index = collection
    pngs = [r["path"] for r in IndexFolder(index).rows]  # the manifest's image files
    monkeypatch.chdir(tmp_path)  # shards named by a relative path...
    args = ["--progress", "false", "--threads", "1"]
    assert main(["shard", str(data), "--out", "shards", "--shard-size", "40"]) == 0
    assert main(["embed", str(model), "shards", "--out", "emb", *args]) == 0
    assert main(["index", "emb", "--out", "idx"]) == 0
    monkeypatch.chdir(tmp_path / "shards")  # ...and served from another directory
    searcher = load_searcher(str(tmp_path / "idx"), None, "auto")
    client = TestClient(create_app(searcher))
    rows = searcher.index.rows
    for item in (0, 45, 95):  # the first, a middle and the last tar
        assert ".tar:" in rows[item]["path"]
        r = client.get(f"/api/items/{item}")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
        # `clipforge shard` copies the PNG bytes, and a 32-pixel image is no thumbnail's
        # reduction: the manifest's own image, pixel for pixel.
        got, want = Image.open(io.BytesIO(r.content)), Image.open(pngs[item]).convert("RGB")
        assert np.array_equal(np.asarray(got), np.asarray(want))
    # Images like item 45: the same query, so the same hits, as uploading its PNG.
    r = client.get("/api/search", params={"item": 45, "k": 5})
    upload = open(pngs[45], "rb").read()
    same = client.post("/api/search", files={"image": ("q.png", upload)}, data={"k": "5"})
    assert r.status_code == 200 and r.json()["hits"] == same.json()["hits"]
    assert client.get("/api/items/96").status_code == 404


def test_a_text_collection_is_served_over_its_texts(tmp_path, collection):
    from fastapi.testclient import TestClient

    from clipforge.cli.collections import load_searcher
    from clipforge.serve.app import create_app

    _, model, _, data, _, _ = collection
    f = tmp_path / "t.txt"
    f.write_text("a red circle\na blue square\nthree green stars\n")
    emb, idx = tmp_path / "emb", tmp_path / "idx"
    quiet = ["--progress", "false", "--threads", "1"]
    assert main(["embed", str(model), "--texts", str(f), "--out", str(emb), *quiet]) == 0
    assert main(["index", str(emb), "--out", str(idx)]) == 0
    client = TestClient(create_app(load_searcher(str(idx), None, "auto")))
    r = client.get("/api/search", params={"q": "a blue square", "k": 1})
    assert r.status_code == 200 and r.json()["hits"][0]["caption"] == "a blue square"
    png = next((data / "images").iterdir()).read_bytes()
    for call, status, needle in [
        (lambda: client.get("/api/items/0"), 404, "item 0 is a text"),
        (lambda: client.get("/api/search", params={"item": 0}), 400, "holds no images"),
        (lambda: client.post("/api/search", files={"image": ("q.png", png)}), 400, "no images"),
    ]:
        r = call()
        assert r.status_code == status and needle in r.json()["detail"], r.text


def truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buf, "JPEG")
    return buf.getvalue()[:300]


# Every bad request: (call, expected status, a phrase of its one-line detail).
BAD_REQUESTS = [
    (lambda c: c.get("/api/search", params={"q": "", "k": 5}), 400, "the query is empty"),
    (lambda c: c.get("/api/search", params={"q": "x" * 10_000}), 400, "10000 characters"),
    (lambda c: c.get("/api/search", params={"q": "a", "k": 0}), 422, ""),
    (lambda c: c.get("/api/search", params={"q": "a", "k": -1}), 422, ""),
    (lambda c: c.get("/api/search", params={"q": "a", "k": 10**9}), 422, ""),
    (lambda c: c.get("/api/search"), 400, "give q"),
    (lambda c: c.get("/api/search", params={"item": 10**6}), 404, "no item 1000000"),
    (lambda c: c.get("/api/items/96"), 404, "no item 96"),
    (lambda c: c.get("/api/items/-1"), 404, "no item -1"),
    (lambda c: c.get("/api/items/abc"), 422, ""),
    (
        lambda c: c.post("/api/search", files={"image": ("a.txt", b"hello")}),
        400,
        "unreadable image",
    ),
    (
        lambda c: c.post("/api/search", files={"image": ("t.jpg", truncated_jpeg())}),
        400,
        "t.jpg",
    ),
    (
        lambda c: c.post("/api/search", files={"image": ("big.png", b"\0" * (50 * 2**20))}),
        413,
        "over 10 MB",
    ),
    (lambda c: c.post("/api/search"), 422, ""),
    (lambda c: c.post("/api/embed"), 400, "give a text or an image"),
    (lambda c: c.post("/api/embed", data={"text": "   "}), 400, "the query is empty"),
]


@pytest.mark.parametrize("call, status, needle", BAD_REQUESTS)
def test_bad_requests_get_a_4xx_and_the_server_keeps_serving(client, call, status, needle):
    r = call(client)
    assert r.status_code == status, r.text
    assert needle in str(r.json()["detail"])
    assert client.get("/api/search", params={"q": "a red circle", "k": 1}).status_code == 200
    assert MAX_UPLOAD_BYTES < 50 * 2**20


def test_bad_requests_leave_every_file_as_it_was(client, collection):
    def files() -> dict[str, bytes]:
        root = collection[0]  # the model, data, embeddings and index folders
        return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    before = files()
    for call, status, _ in BAD_REQUESTS:
        assert call(client).status_code == status
    assert files() == before


def test_a_server_for_another_model_is_refused(collection):
    from clipforge.cli.collections import load_searcher

    _, _, other, _, _, index = collection
    with pytest.raises(ClipforgeError, match="was built with model"):
        load_searcher(str(index), str(other), "auto")


def test_queries_that_arrive_together_share_one_encoder_call():
    import asyncio

    release, calls = threading.Event(), []

    def encode(items):
        calls.append(list(items))
        release.wait(5)
        return np.array([[float(i)] for i in items])

    batcher = Batcher(encode)

    async def main():
        first = asyncio.ensure_future(batcher(0))
        while not calls:  # the worker is busy with the first query...
            await asyncio.sleep(0.001)
        rest = [asyncio.ensure_future(batcher(i)) for i in range(1, 11)]
        await asyncio.sleep(0.05)  # ...while ten more queue up
        release.set()
        return await first, await asyncio.gather(*rest)

    first, rest = asyncio.run(main())
    assert calls == [[0], list(range(1, 11))]
    assert first[0] == 0 and [r[0] for r in rest] == list(range(1, 11))


def test_a_corrupt_or_missing_item_file_gets_a_404_and_the_server_keeps_serving(
    client, searcher, tmp_path, monkeypatch
):
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(truncated_jpeg())
    rows = searcher.index.rows
    # Items 3 and 4 now name a truncated JPEG and a file that is gone (restored after).
    monkeypatch.setitem(rows[3], "path", str(bad))
    monkeypatch.setitem(rows[4], "path", str(tmp_path / "gone.png"))
    for item, reason in ((3, "unreadable image"), (4, "missing image")):
        for r in (
            client.get(f"/api/items/{item}"),
            client.get("/api/search", params={"item": item}),
        ):
            assert r.status_code == 404, r.text
            detail = r.json()["detail"]
            assert f"item {item}: {reason}" in detail and "\n" not in detail
    assert client.get("/api/items/2").status_code == 200
    assert client.get("/api/search", params={"q": "a red circle", "k": 1}).status_code == 200


def test_images_are_decoded_off_the_event_loop(client, searcher, monkeypatch):
    # Every decode (an item's file, an upload) and the thumbnail itself: in a worker
    # thread, where no event loop runs, so a slow image holds up its own request only.
    import asyncio

    import clipforge.serve.app as app_module

    where: list[str] = []

    def thread() -> str:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return "worker"
        return "event loop"

    def probe(real):
        def wrapped(*args, **kwargs):
            where.append(f"{real.__name__} in {thread()}")
            return real(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(app_module, "item_image", probe(app_module.item_image))
    monkeypatch.setattr(app_module, "decode_image", probe(app_module.decode_image))
    save = Image.Image.save
    monkeypatch.setattr(Image.Image, "save", probe(save))
    png = png_of(searcher, 5)
    assert client.get("/api/items/2").status_code == 200
    assert client.get("/api/search", params={"item": 2, "k": 3}).status_code == 200
    assert client.post("/api/search", files={"image": ("q.png", png)}).status_code == 200
    assert client.post("/api/embed", files={"image": ("q.png", png)}).status_code == 200
    assert where == [
        "item_image in worker", "save in worker",  # the thumbnail
        "item_image in worker",  # the similar-items query
        "decode_image in worker", "decode_image in worker",  # the two uploads
    ]  # fmt: skip
