"""The test index of tests/index served by the app (model loaded once per session)."""

from __future__ import annotations

import pytest

from tests.index.conftest import collection  # noqa: F401  (the shared fixture)

pytest.importorskip("fastapi")


@pytest.fixture(scope="session")
def searcher(collection):  # noqa: F811
    from clipforge.cli.collections import load_searcher

    *_, index = collection
    return load_searcher(str(index), None, "auto")


@pytest.fixture(scope="session")
def client(searcher):
    from fastapi.testclient import TestClient

    from clipforge.serve.app import create_app

    return TestClient(create_app(searcher))
