"""A job's input image, fetched into its work folder under the settings' limits (`edge/image.py` does the
vetting: URL, redirects, bytes, pixels, decode time). Apart from `runner.py`, which only times it as the
job's `downloading` stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from worker_app_fastwan.core.settings import Settings


async def fetch_image(
    settings: Settings, image_url: str | None, work: Path, on_start: Callable[[], None]
) -> tuple[str | None, float]:
    """The image's local path and the seconds its download took; (None, 0.0) for a job without one.
    `on_start` is called once a download begins (the runner reports the stage then)."""
    if image_url is None:
        return None, 0.0
    # Imported here, as the runner did before this module existed: only a job with an image needs it.
    from worker_app_fastwan.edge.image import download_image

    on_start()
    start = time.monotonic()
    path = await download_image(
        image_url,
        work,
        allow_private=settings.ALLOW_PRIVATE_IMAGE_URLS,
        trusted_origin=settings.ORCHESTRATOR_BASE_URL,  # it serves the images uploaded to it
        max_bytes=settings.MAX_IMAGE_BYTES,
        timeout_s=settings.IMAGE_TIMEOUT_S,
    )
    return str(path), time.monotonic() - start
