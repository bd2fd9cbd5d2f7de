"""Resolve a media reference (path, file://, http(s)://, data: URL) to a local path or bytes."""
import base64
import binascii
import os
import re
import urllib.error
import urllib.request
from typing import Union

HTTP_TIMEOUT_SECONDS = 30.0
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


def resolve_source(source: str, timeout: float = HTTP_TIMEOUT_SECONDS) -> Union[str, bytes]:
    """Local path (checked to exist) for paths and file:// URLs; the content as bytes for
    http(s):// and base64 data: URLs.

    Raises FileNotFoundError (with the path) for a missing file, OSError with the HTTP status
    for a failed download, and ValueError for an unsupported scheme or a malformed data URL.
    """
    match = _SCHEME.match(source)
    # one-letter "schemes" are Windows drive letters (C:\...)
    scheme = match.group(1).lower() if match and len(match.group(1)) > 1 else None
    if scheme is None or scheme == "file":
        path = source[len("file://") :] if scheme == "file" else source
        if not os.path.isfile(path):
            raise FileNotFoundError(f"media file not found: {path}")
        return path
    if scheme in ("http", "https"):
        return _download(source, timeout)
    if scheme == "data":
        header, sep, payload = source.partition(",")
        if not sep or not header.endswith(";base64"):
            raise ValueError(f"only base64 data URLs are supported, got one starting {source[:40]!r}")
        try:
            return base64.b64decode(payload, validate=True)
        except binascii.Error as e:
            raise ValueError(f"invalid base64 in data URL {source[:40]!r}...: {e}") from e
    raise ValueError(
        f"unsupported URL scheme {scheme!r} in {source[:80]!r}: use a local path, file://, http(s):// or data:"
    )


def _download(url: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as e:
        raise OSError(f"HTTP error {e.code} ({e.reason}) while downloading {url}") from e
    except (urllib.error.URLError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise OSError(f"could not download {url}: {reason}") from e
