"""Ask a question about a video (frames sampled at --fps, the real sampling rate reaching the model).

    python examples/video_infer.py --video_file clip.mp4 --fps 2.0

PaddleMIX's defaults: 1 frame per second, 360*420 pixels per frame, 512 new tokens;
--fp16 is --dtype float16.
"""

from paddlemix_qwen25vl.cli import answer, build_parser, load
from paddlemix_qwen25vl.demo import DEMO_VIDEO


def main() -> None:
    parser = build_parser(__doc__)
    parser.add_argument("--video_file", default=DEMO_VIDEO)
    parser.add_argument("--fps", type=float, default=1.0, help="frames sampled per second of video")
    parser.add_argument("--video_max_pixels", type=int, default=360 * 420, help="pixel budget per frame")
    parser.add_argument("--fp16", action="store_true", help="same as --dtype float16")
    parser.set_defaults(question="Describe this video.", max_new_tokens=512)
    args = parser.parse_args()
    if args.fp16:
        args.dtype = "float16"
    model, processor = load(args)
    video = {"type": "video", "video": args.video_file, "fps": args.fps, "max_pixels": args.video_max_pixels}
    messages = [{"role": "user", "content": [video, {"type": "text", "text": args.question}]}]
    answer(model, processor, [messages], args)


if __name__ == "__main__":
    main()
