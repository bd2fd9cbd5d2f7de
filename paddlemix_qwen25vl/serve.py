"""``python -m paddlemix_qwen25vl.serve``: an OpenAI-compatible server with a chat page.

    python -m paddlemix_qwen25vl.serve                      # the bundled demo model, http://127.0.0.1:8000
    python -m paddlemix_qwen25vl.serve --model_path Qwen/Qwen2.5-VL-3B-Instruct --api_key KEY

Serves ``POST /v1/chat/completions`` (streaming too), ``GET /v1/models``, ``GET /health`` and
the chat page at ``/`` (see :mod:`paddlemix_qwen25vl.serving.app`). Binds 127.0.0.1 unless
``--host`` says otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from .cli import add_model_flags

__all__ = ["build_parser", "settings_from_args", "create_server", "main"]

DEMO_MODEL_NAME = "paddlemix-qwen25vl-demo"


def build_parser() -> argparse.ArgumentParser:
    """The server's flags: model loading, address, batching, key, per-request limits."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(parser)
    parser.add_argument("--served_model_name", default=None,
                        help="the name clients send as 'model' (default: --model_path as given, or "
                        f"{DEMO_MODEL_NAME!r} for the demo)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max_batch_size", type=int, default=8, help="sequences decoded together in one step")
    parser.add_argument("--max_queue", type=int, default=64, help="requests waiting beyond the batch; more get 429")
    parser.add_argument("--vision_cache_mb", type=int, default=256,
                        help="MiB of vision features kept for images sent again (each turn of a conversation); 0: none")
    parser.add_argument("--api_key", default=None, help="require 'Authorization: Bearer KEY' (all but /health and the page)")
    parser.add_argument("--allowed_local_media_path", default=None,
                        help="allow image/video URLs that are local paths under this directory (default: none)")
    limits = parser.add_argument_group("per-request limits")
    limits.add_argument("--max_images", type=int, default=8)
    limits.add_argument("--max_videos", type=int, default=1)
    limits.add_argument("--max_media_bytes", type=int, default=20 * 1024 * 1024, help="bytes per image or video")
    limits.add_argument("--max_image_pixels", type=int, default=50_000_000, help="pixels per image, read from its header")
    limits.add_argument("--max_video_frames", type=int, default=32, help="frames sampled per video at most")
    limits.add_argument("--media_timeout", type=float, default=10.0, help="seconds to fetch an http(s) media URL")
    limits.add_argument("--max_prompt_tokens", type=int, default=16384, help="prompt tokens, media included")
    limits.add_argument("--max_completion_tokens", type=int, default=2048,
                        help="largest max_tokens, and the default when a request gives none")
    limits.add_argument("--max_request_bytes", type=int, default=64 * 1024 * 1024)
    parser.add_argument("--log_level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return parser


def settings_from_args(args: argparse.Namespace):
    """ServerSettings from the parsed flags."""
    from .serving.app import ServerSettings
    from .serving.media import MediaLimits

    if args.allowed_local_media_path is not None and not os.path.isdir(args.allowed_local_media_path):
        raise SystemExit(f"--allowed_local_media_path {args.allowed_local_media_path!r} is not a directory")
    media = MediaLimits(max_images=args.max_images, max_videos=args.max_videos, max_bytes=args.max_media_bytes,
                        max_image_pixels=args.max_image_pixels, max_video_frames=args.max_video_frames,
                        timeout=args.media_timeout, allowed_local_dir=args.allowed_local_media_path)
    name = args.served_model_name or args.model_path or DEMO_MODEL_NAME
    return ServerSettings(model_name=name, api_key=args.api_key, media=media, max_prompt_tokens=args.max_prompt_tokens,
                          max_completion_tokens=args.max_completion_tokens, max_request_bytes=args.max_request_bytes)


def _load(args: argparse.Namespace):
    """Model, processor (loaded as by the inference scripts) and a started engine."""
    from .cli import load
    from .serving.app import ServedModel
    from .serving.engine import Engine
    from .serving.vision_cache import VisionFeatureCache

    model, processor = load(args)
    cache = VisionFeatureCache(args.vision_cache_mb << 20) if args.vision_cache_mb > 0 else None
    engine = Engine(model, max_batch_size=args.max_batch_size, max_queue=args.max_queue, vision_cache=cache)
    engine.start()
    return ServedModel(processor=processor, engine=engine, context_length=int(model.config.max_position_embeddings))


def create_server(args: argparse.Namespace):
    """A uvicorn Server for the flags; the model loads in the background once it runs.
    A failed load stops the server (``server.load_error`` holds why)."""
    import uvicorn

    from .serving.app import create_app

    def stop(err: BaseException) -> None:
        server.load_error = err
        server.should_exit = True

    app = create_app(settings_from_args(args), lambda: _load(args), on_load_error=stop)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level))
    server.load_error = None
    return server


def main(argv: Optional[List[str]] = None) -> None:
    """Parse the flags and serve until interrupted."""
    args = build_parser().parse_args(argv)
    server = create_server(args)
    server.run()
    if server.load_error is not None:
        sys.exit(f"the server stopped: loading the model failed: {server.load_error}")


if __name__ == "__main__":
    main()
