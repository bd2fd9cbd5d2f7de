"""Media of API requests: fetch image and video URLs within limits, before anything is decoded.

A URL is a base64 data URL, an http(s) URL (fetched with a timeout and a byte cap) or a local
path / file:// URL, the last only inside the directory the server allows (none by default).
An image's pixel count is read from its header and refused above the cap before it is decoded.
Failures are :class:`~.protocol.APIError`: 413 for too large, 400 for the rest.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Optional

from PIL import Image

from .protocol import APIError

__all__ = ["MediaLimits", "fetch_bytes", "open_image", "video_file"]

_READ_CHUNK = 1 << 16
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")  # two letters at least: C:\\ is a drive


def _scheme(url: str) -> str:
    """"data", "http", "file", ... or "" for a plain path."""
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else ""


@dataclass(frozen=True)
class MediaLimits:
    """Per-request media limits: counts, bytes per item, pixels per image, frames per video."""

    max_images: int = 8
    max_videos: int = 1
    max_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    max_video_frames: int = 32
    timeout: float = 10.0
    allowed_local_dir: Optional[str] = None


def _too_large(what: str, size: int, limit: int, unit: str = "bytes") -> APIError:
    return APIError(413, f"{what} is too large: {size} {unit}, the limit is {limit} {unit}", code="media_too_large")


def _data_url(url: str, limits: MediaLimits, param: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise APIError(400, f"{param}: only base64 data URLs are supported, got one starting {url[:40]!r}",
                       param=param, code="invalid_media")
    if len(payload) * 3 // 4 > limits.max_bytes:  # decoded size, known before decoding
        raise _too_large(f"{param} (data URL)", len(payload) * 3 // 4, limits.max_bytes)
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error as err:
        raise APIError(400, f"{param}: broken base64 in the data URL: {err}", param=param, code="invalid_media") from None


def _http(url: str, limits: MediaLimits, param: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=limits.timeout) as response:
            declared = int(response.headers.get("Content-Length") or 0)
            if declared > limits.max_bytes:
                raise _too_large(f"{param} ({url[:80]})", declared, limits.max_bytes)
            data = bytearray()
            while len(data) <= limits.max_bytes:
                chunk = response.read(_READ_CHUNK)
                if not chunk:
                    return bytes(data)
                data += chunk
            raise _too_large(f"{param} ({url[:80]})", len(data), limits.max_bytes)
    except urllib.error.HTTPError as err:
        raise APIError(400, f"{param}: fetching {url[:80]} failed with HTTP {err.code} ({err.reason})", param=param,
                       code="invalid_media") from None
    except (urllib.error.URLError, OSError, ValueError) as err:  # refused, timed out, bad URL
        reason = getattr(err, "reason", err)
        raise APIError(400, f"{param}: could not fetch {url[:80]}: {reason}", param=param, code="invalid_media") from None


def _local_path(url: str, limits: MediaLimits, param: str) -> str:
    path = url[len("file://"):] if url.startswith("file://") else url
    if limits.allowed_local_dir is None:
        raise APIError(400, f"{param}: local paths are disabled on this server (start it with "
                       "--allowed_local_media_path DIR to allow files under DIR); send a data URL or http(s) URL",
                       param=param, code="invalid_media")
    root = os.path.realpath(limits.allowed_local_dir)
    real = os.path.realpath(path)
    if os.path.commonpath([root, real]) != root:
        raise APIError(400, f"{param}: {path!r} is outside the allowed media directory", param=param,
                       code="invalid_media")
    if not os.path.isfile(real):
        raise APIError(400, f"{param}: no such file in the allowed media directory: {path!r}", param=param,
                       code="invalid_media")
    if os.path.getsize(real) > limits.max_bytes:
        raise _too_large(f"{param} ({path})", os.path.getsize(real), limits.max_bytes)
    return real


def fetch_bytes(url: str, limits: MediaLimits, param: str) -> bytes:
    """The content behind ``url`` (data:, http(s)://, or an allowed local path), at most ``limits.max_bytes``."""
    scheme = _scheme(url)
    if scheme == "data":
        return _data_url(url, limits, param)
    if scheme in ("http", "https"):
        return _http(url, limits, param)
    if scheme in ("", "file"):
        with open(_local_path(url, limits, param), "rb") as f:
            return f.read()
    raise APIError(400, f"{param}: unsupported URL scheme {scheme!r}: use a data URL, http(s) or a local path",
                   param=param, code="invalid_media")


def open_image(url: str, limits: MediaLimits, param: str) -> Image.Image:
    """The decoded image at ``url``; its size is checked from the header first (413 above
    ``limits.max_image_pixels``), bytes that are not an image give 400."""
    data = fetch_bytes(url, limits, param)
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as err:  # PIL's own bomb check, at twice its MAX_IMAGE_PIXELS
        raise APIError(413, f"{param}: {err}", param=param, code="media_too_large") from None
    except OSError:
        raise APIError(400, f"{param}: the data ({len(data)} bytes) is not an image PIL can read", param=param,
                       code="invalid_media") from None
    width, height = image.size
    if width * height > limits.max_image_pixels:
        raise _too_large(f"{param} ({width}x{height})", width * height, limits.max_image_pixels, unit="pixels")
    try:
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as err:  # truncated or corrupt data
        raise APIError(400, f"{param}: cannot decode the image: {err}", param=param, code="invalid_media") from None
    return image


def video_file(url: str, limits: MediaLimits, param: str) -> tuple:
    """(path, is_temporary) of a video file for ``fetch_video``: an allowed local file as it is,
    other URLs fetched within the byte cap into a temporary file the caller deletes."""
    scheme = _scheme(url)
    if scheme in ("", "file"):
        return _local_path(url, limits, param), False
    data = fetch_bytes(url, limits, param)
    with tempfile.NamedTemporaryFile(prefix="paddlemix_video_", suffix=".mp4", delete=False) as f:
        f.write(data)
    return f.name, True
