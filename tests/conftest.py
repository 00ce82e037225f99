from __future__ import annotations

import numpy as np
import pytest

from builders import small_crawl_config
from curation.crawl.config import CrawlConfig
from pipelines.demo.synthetic_images import encode, make_photo


@pytest.fixture
def photo() -> np.ndarray:
    return make_photo(7)


@pytest.fixture
def jpeg(photo) -> bytes:
    return encode(photo)


@pytest.fixture
def crawl_config() -> CrawlConfig:
    return small_crawl_config()
