"""Headless Chromium for the report tests: a DOM dump, a screenshot, and a PNG reader.

Uses Debian's `chromium` without a driver: ``--dump-dom`` prints the page
as the browser built it (after any script would have run) and
``--screenshot`` writes a PNG. Where Chromium is missing the tests skip,
saying so, unless KALAB_REQUIRE_CHROMIUM=1 (CI), where they fail.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> str | None:
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_chromium() -> str:
    """The browser's path; else skip (or fail where CI says it must be there)."""
    found = chromium()
    if found:
        return found
    reason = "headless Chromium is not installed (apt-get install chromium chromium-driver)"
    if os.environ.get("KALAB_REQUIRE_CHROMIUM") == "1":
        pytest.fail(f"KALAB_REQUIRE_CHROMIUM=1 but {reason}")
    pytest.skip(reason)


def _run(page: Path, *extra: str, timeout: float = 90) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="kalab-chromium-") as profile:
        return subprocess.run(
            [require_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--hide-scrollbars",
             f"--user-data-dir={profile}", *extra, page.resolve().as_uri()],
            capture_output=True, text=True, timeout=timeout)


def dump_dom(page: Path) -> str:
    done = _run(page, "--dump-dom")
    assert done.returncode == 0 and "<html" in done.stdout, done.stderr[-2000:]
    return done.stdout


def screenshot(page: Path, png: Path, width: int = 1400, height: int = 1200) -> Path:
    done = _run(page, f"--screenshot={png.resolve()}", f"--window-size={width},{height}")
    assert done.returncode == 0 and png.is_file(), done.stderr[-2000:]
    return png


class Elements(HTMLParser):
    """Every element of a document: (tag, attributes, the ladder svg it is in, if any)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str], dict[str, str] | None]] = []
        self.text: list[str] = []
        self._ladder: dict[str, str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "svg" and "ladder" in values.get("class", "").split():
            self._ladder = values
        self.found.append((tag, values, self._ladder))

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._ladder = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def with_class(self, *classes: str) -> list[tuple[str, dict[str, str], dict | None]]:
        return [e for e in self.found if set(classes) <= set(e[1].get("class", "").split())]


def png_pixels(path: Path, max_rows: int | None = None) -> tuple[int, int, list[bytes]]:
    """Width, height and the first RGB rows of an 8-bit RGB(A) PNG (what Chromium writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour in (2, 6), (depth, colour)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw, stride = zlib.decompress(idat), width * channels
    rows, previous = [], bytearray(stride)
    for y in range(min(height, max_rows or height)):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, corner = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc
                                      else corner)) & 0xFF
        previous = line
        rows.append(bytes(b for i, b in enumerate(line) if i % channels < 3))
    return width, height, rows


def count_colour(rows: list[bytes], rgb: tuple[int, int, int], tolerance: int = 12) -> int:
    """Pixels within ``tolerance`` of a colour (anti-aliasing spares solid areas)."""
    count = 0
    for row in rows:
        for i in range(0, len(row), 3):
            if all(abs(row[i + c] - rgb[c]) <= tolerance for c in range(3)):
                count += 1
    return count


def marker_set(dom: str, marker: str) -> bool:
    """Whether a script ran: the attacks set ``marker`` on <html> if they ever run."""
    (root,) = [attrs for tag, attrs, _ in Elements(dom).found if tag == "html"]
    return marker in root
