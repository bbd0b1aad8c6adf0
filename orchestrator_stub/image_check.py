"""Where a PNG, JPEG or WebP file ends, by its own structure: an upload with bytes after its end is refused.

Decoders stop at the image's end and ignore what follows, so trailing bytes would ride along unchecked
(another file appended to a valid image, served back from the stub's own origin). Each function returns the
offset just past the image's last byte, or raises ValueError when the structure is broken.
"""

from __future__ import annotations

import struct

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_end(data: bytes) -> int:
    """Past the IEND chunk: chunk by chunk (length, type, data, CRC) from the signature on."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG signature")
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        pos += 12 + length
        if pos > len(data):
            break
        if kind == b"IEND":
            return pos
    raise ValueError("the PNG has no IEND chunk")


def jpeg_end(data: bytes) -> int:
    """Past the EOI marker: segment by segment, and through each scan's entropy-coded data."""
    if not data.startswith(b"\xff\xd8"):
        raise ValueError("not a JPEG start-of-image marker")
    pos = 2
    size = len(data)
    while pos < size:
        if data[pos] != 0xFF:
            raise ValueError(f"no JPEG marker at byte {pos}")
        while pos < size and data[pos] == 0xFF:  # fill bytes before a marker
            pos += 1
        if pos >= size:
            break
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # end of image
            return pos
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            continue
        if pos + 2 > size:
            break
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        pos += length
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next marker that is not RSTn or a stuffed 0
            while pos + 1 < size and not (data[pos] == 0xFF and data[pos + 1] not in (0x00, *range(0xD0, 0xD8))):
                pos += 1
    raise ValueError("the JPEG has no end-of-image marker")


def webp_end(data: bytes) -> int:
    """The RIFF container's own length: 8 bytes of header plus the size it declares (padded to even)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ValueError("not a RIFF WebP header")
    (size,) = struct.unpack("<I", data[4:8])
    return 8 + size + (size & 1)


ENDS = {"PNG": png_end, "JPEG": jpeg_end, "WEBP": webp_end}


def trailing_bytes(fmt: str, data: bytes) -> int:
    """How many bytes follow the image's end (0 for a clean file); raises ValueError on a broken structure."""
    end = ENDS[fmt](data)
    if end > len(data):
        raise ValueError("the file is shorter than its image")
    return len(data) - end
