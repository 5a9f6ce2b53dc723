"""A tiny proxy dataset shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def proxy_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from spai.data.proxy import make_proxy_dataset

    return make_proxy_dataset(tmp_path_factory.mktemp("proxy"), n=10, seed=1)
