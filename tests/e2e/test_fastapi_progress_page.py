"""The FastAPI example's progress page in a real headless Chromium, fed by a real stream over SSE.

Started the way the example's docstring says (``celery -A app:celery_app
worker`` and ``uvicorn app:app`` in ``examples/fastapi_app``, see
``tests/fastapi_site.py``), on this run's private Redis. The page's events
endpoint reads the stream with ``AsyncStream.follow`` on uvicorn's loop. The
test waits until the page says the stream ended, writes a screenshot to
``artifacts/fastapi_progress_page.png`` and checks that the bar reached 100%.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from devtools import watch_progress_page
from fastapi_site import fastapi_site

pytest.importorskip("fastapi", reason="the [fastapi] extra is not installed")

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def test_fastapi_progress_page_reaches_100_percent_in_chromium(chromium: str, redis_url: str) -> None:
    with fastapi_site(redis_url) as site:
        url = site.url + "/progress?rows=20000&chunk=1000&delay=0.05"
        page = watch_progress_page(chromium, url, ARTIFACTS / "fastapi_progress_page.png")
    assert page.outcome == "ok"
    assert page.percent == "100%" and page.width == "100%"
    assert page.rows == "20000 / 20000 rows"
    assert len(page.percents) > 3, page.percents  # the bar moved as the chunks arrived
