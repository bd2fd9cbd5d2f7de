"""Ask the same question about several images in one left-padded batch.

    python examples/single_image_batch_infer.py --image_file a.jpg b.jpg --question "What is in this picture?"
"""

from paddlemix_qwen25vl.cli import answer, build_parser, load
from paddlemix_qwen25vl.demo import DEMO_IMAGE, DEMO_IMAGE_2


def main() -> None:
    parser = build_parser(__doc__)
    parser.add_argument("--image_file", nargs="+", default=[DEMO_IMAGE, DEMO_IMAGE_2])
    parser.set_defaults(question="What shape is this?", max_new_tokens=1024)  # PaddleMIX's 1024 new tokens
    args = parser.parse_args()
    model, processor = load(args)
    conversations = [
        [{"role": "user", "content": [{"type": "image", "image": path}, {"type": "text", "text": args.question}]}]
        for path in args.image_file
    ]
    answer(model, processor, conversations, args)


if __name__ == "__main__":
    main()
