"""The preprocessing tests' media: tokenizer files, test videos, a local HTTP server."""
import contextlib
import http.server
import tempfile
import threading
from fractions import Fraction
from typing import Dict, Iterator, Tuple, Union

import numpy as np

_TOKENIZER_DIR = None
# frame_pattern: grey levels _STEP apart, _BASE of them per half
_BASE, _STEP = 20, 12


def tokenizer_dir() -> str:
    """Tokenizer files built once per test process (about 2 s) into a temporary directory."""
    global _TOKENIZER_DIR
    if _TOKENIZER_DIR is None:
        from paddlemix_qwen25vl.processing import build_tokenizer_files

        _TOKENIZER_DIR = build_tokenizer_files(tempfile.mkdtemp(prefix="qwen25vl_tokenizer_"))
    return _TOKENIZER_DIR


def frame_pattern(index: int, height: int = 48, width: int = 64) -> np.ndarray:
    """An RGB frame whose halves encode index // 20 and index % 20 as flat grey levels (index < 400).

    Flat blocks survive lossy coding to within a few levels, so `decode_frame_index` recovers
    which source frame a decoded frame came from.
    """
    if not 0 <= index < _BASE * _BASE:
        raise ValueError(f"frame_pattern encodes indices below {_BASE * _BASE}, got {index}")
    frame = np.empty((height, width, 3), np.uint8)
    frame[:, : width // 2] = (index // _BASE) * _STEP + _STEP // 2
    frame[:, width // 2 :] = (index % _BASE) * _STEP + _STEP // 2
    return frame


def decode_frame_index(frame: np.ndarray) -> int:
    """Inverse of `frame_pattern` (reads the centre of each half)."""
    h, w = frame.shape[:2]
    high = int(frame[h // 4 : 3 * h // 4, w // 8 : 3 * w // 8].mean()) // _STEP
    low = int(frame[h // 4 : 3 * h // 4, 5 * w // 8 : 7 * w // 8].mean()) // _STEP
    return high * _BASE + low


def write_video(path: str, num_frames: int, fps: Union[int, Fraction], height: int = 48, width: int = 64) -> str:
    """Write an mp4 (mpeg4, high quality) of `num_frames` `frame_pattern` frames at `fps` with PyAV."""
    import av

    with av.open(path, mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"qscale": "1"}
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_pattern(i, height, width), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@contextlib.contextmanager
def http_server(routes: Dict[str, Tuple[int, bytes]], timeout: float = 30.0) -> Iterator[str]:
    """Serve {path: (status, body)} on 127.0.0.1 in a daemon thread; yields the base URL.

    Unknown paths answer 404. The server shuts itself down on exit, or after `timeout`
    seconds at the latest, so a failing test cannot leave it running.
    """

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            status, body = routes.get(self.path, (404, b"not found"))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # keep test output quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    watchdog = threading.Timer(timeout, server.shutdown)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        watchdog.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
