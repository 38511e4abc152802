"""The FastAPI application of ``clipforge serve``.

The model loads once, when the app is made; text and image queries go through one
:class:`~.batching.Batcher` each, so requests that arrive together share an encoder call.
Bad input gets a 4xx with a one-line ``detail`` (400 for a query clipforge refuses, 404
for an unknown item, 413 for an oversized upload, 422 for a malformed parameter), and
the server keeps serving: nothing a request sends is written to disk.

Decoding an image (an upload, an item's file) and making a thumbnail block for as long
as the image takes, so they run in the threadpool (``run_in_threadpool``, or a plain
``def`` route, which FastAPI runs there), never on the event loop: a large or slow image
holds up its own request only.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool

from clipforge.data.readers import decode_image
from clipforge.data.sample import SampleError
from clipforge.errors import ClipforgeError
from clipforge.index.items import item_image
from clipforge.index.search import MAX_K, Searcher, check_query
from clipforge.serve.batching import Batcher
from clipforge.serve.metrics import Metrics

MAX_UPLOAD_BYTES = 10 * 2**20  # a photo is a few MB; more is a mistake or an attack
THUMBNAIL = 256
PAGE = Path(__file__).with_name("page.html")


def create_app(searcher: Searcher) -> FastAPI:
    """The application serving ``searcher``'s index (model already loaded)."""
    app = FastAPI(title="clipforge search", docs_url=None, redoc_url=None)
    metrics = Metrics()
    index = searcher.index
    lock = threading.Lock()  # one encoder call at a time: the model is shared

    def run(queries: list[tuple[Any, int, str]], encode: Any) -> list[Any]:
        """Encode a batch of ``(query, k, target)`` and search each target once; an
        entry of ``k == 0`` asks for the embedding itself."""
        with lock:
            vecs = encode([q for q, _, _ in queries]).numpy()
        out: list[Any] = [vecs[i] for i in range(len(queries))]
        for where in {t for _, k, t in queries if k}:
            rows = [i for i, (_, k, t) in enumerate(queries) if k and t == where]
            found = index.search(vecs[rows], max(queries[i][1] for i in rows), where)
            for i, hs in zip(rows, found, strict=True):
                out[i] = [h.to_dict() for h in hs[: queries[i][1]]]
        return out

    texts = Batcher(lambda qs: run(qs, searcher.embedder.text_batch))
    images = Batcher(lambda qs: run(qs, searcher.embedder.image_batch))
    target = "images" if "images" in index.indexes else "captions"

    @app.middleware("http")
    async def measure(request: Request, call_next: Any) -> Response:
        t = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        name = getattr(route, "path", "unmatched")
        metrics.record(
            f"{request.method} {name}", response.status_code, (time.perf_counter() - t) * 1e3
        )
        return response

    @app.exception_handler(ClipforgeError)
    async def refused(_: Request, e: ClipforgeError) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=400)

    def decode_upload(data: bytes, filename: str | None) -> Image.Image:
        try:
            return decode_image(data, filename or "upload")
        except SampleError as e:
            raise HTTPException(
                400, f"{filename or 'the upload'}: {e.reason.replace('_', ' ')}"
            ) from None

    async def read_image(upload: UploadFile) -> Image.Image:
        data = await upload.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise HTTPException(413, f"the upload is over {MAX_UPLOAD_BYTES // 2**20} MB")
        return await run_in_threadpool(decode_upload, data, upload.filename)

    def image_of(item: int) -> Image.Image:
        if not 0 <= item < len(index.rows):
            raise HTTPException(
                404, f"no item {item} (the index holds items 0 to {len(index.rows) - 1})"
            )
        if index.info.get("kind") == "text":
            raise HTTPException(404, f"item {item} is a text; this index holds no images")
        path = index.rows[item].get("path", "")
        try:
            return item_image(path)  # a file, or a member of a tar shard
        except SampleError as e:
            raise HTTPException(
                404, f"item {item}: {e.reason.replace('_', ' ')} ({path})"
            ) from None

    page_html = PAGE.read_text(encoding="utf-8")  # read once: no file I/O on the loop

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return page_html

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "rows": len(index.rows), "model": index.fingerprint}

    @app.get("/metrics")
    async def get_metrics() -> dict:
        return {"routes": metrics.snapshot(), "encoder": {
            "text_batches": texts.batches, "texts": texts.items,
            "image_batches": images.batches, "images": images.items}}  # fmt: skip

    @app.get("/api/search")
    async def search_text(
        q: str | None = Query(None, description="text query"),
        item: int | None = Query(None, description="an item id: images similar to it"),
        k: int = Query(10, ge=1, le=MAX_K),
        captions: bool = Query(False, description="match the text against stored captions"),
    ) -> dict:
        if (q is None) == (item is None):
            raise HTTPException(400, "give q (a text) or item (an id), one of them")
        if item is not None:
            if target != "images":
                raise HTTPException(400, "this index holds no images to compare")
            query = await run_in_threadpool(image_of, item)
            return {"item": item, "hits": await images((query, k, "images"))}
        where = "captions" if captions else target
        return {"query": q, "hits": await texts((check_query(q or ""), k, where))}

    @app.post("/api/search")
    async def search_image(
        image: Annotated[UploadFile, File()], k: Annotated[int, Form(ge=1, le=MAX_K)] = 10
    ) -> dict:
        if target != "images":
            raise HTTPException(400, "this index holds no images to search by image")
        return {"hits": await images((await read_image(image), k, "images"))}

    @app.post("/api/embed")
    async def embed(
        text: Annotated[str | None, Form()] = None,
        image: Annotated[UploadFile | None, File()] = None,
    ) -> dict:
        if (text is None) == (image is None):
            raise HTTPException(400, "give a text or an image, one of them")
        if text is not None:
            vec = await texts((check_query(text), 0, ""))
        else:
            vec = await images((await read_image(image), 0, ""))
        return {"model": index.fingerprint, "embedding": [round(float(v), 6) for v in vec]}

    @app.get("/api/items/{item}")
    def thumbnail(item: int) -> Response:  # a plain def: FastAPI runs it in the threadpool
        im = image_of(item)
        im.thumbnail((THUMBNAIL, THUMBNAIL))
        buf = io.BytesIO()
        im.save(buf, "PNG")
        return Response(buf.getvalue(), media_type="image/png")

    return app


__all__ = ["MAX_UPLOAD_BYTES", "create_app"]
