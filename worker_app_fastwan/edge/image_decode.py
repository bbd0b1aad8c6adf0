"""Decode an untrusted image in a short-lived process of its own, and write it back as an RGB PNG.

    python -m worker_app_fastwan.edge.image_decode SRC DEST MAX_PIXELS

A crafted image can make a decoder slow (a progressive JPEG with thousands of scans) or hungry; in a
process of its own it can be killed at a deadline and its memory never lands in the worker parent, which
carries the heartbeats and the outbox. The size in the header is checked against MAX_PIXELS before any
pixel is decoded. Exit 0: DEST written. Exit 3: the image is refused; stdout holds the reason, one line
that a client may see.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
REFUSED_EXIT = 3
# Address space for the decoder: a 16 MP RGBA image is 64 MB, Pillow's and Python's own needs are far below this.
MEMORY_LIMIT_BYTES = 2 << 30


class Refused(Exception):
    """The image cannot be used; the message says why, for the client."""


def decode_to_png(src: Path, dest: Path, max_pixels: int) -> None:
    """Check the header's size, decode, apply EXIF orientation, and write an RGB PNG of our own."""
    try:
        with Image.open(src, formats=IMAGE_FORMATS) as probe:
            width, height = probe.size
            if width * height > max_pixels:
                raise Refused(f"is {width}×{height} pixels, more than the {max_pixels}-pixel limit")
            probe.verify()
        with Image.open(src, formats=IMAGE_FORMATS) as img:
            img.load()
            # The PNG drops EXIF, so apply a phone photo's orientation now or it would end up sideways.
            rgb = ImageOps.exif_transpose(img).convert("RGB")
    except MemoryError:
        raise Refused("needs too much memory to decode") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise Refused(f"could not be decoded as a PNG/JPEG/WebP image ({type(exc).__name__})") from None
    rgb.save(dest, format="PNG", compress_level=1)  # a scratch file: speed over size


def main(argv: list[str]) -> int:
    src, dest, max_pixels = Path(argv[0]), Path(argv[1]), int(argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    # Pillow's own guard reads the same header; the check in decode_to_png gives the clearer message.
    Image.MAX_IMAGE_PIXELS = None
    try:
        decode_to_png(src, dest, max_pixels)
    except Refused as exc:
        print(str(exc), flush=True)
        return REFUSED_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
