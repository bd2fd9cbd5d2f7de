"""Ask one question about several images.

    python examples/multi_image_infer.py --image_file a.jpg b.jpg --question "What differs between the two pictures?"
"""

from paddlemix_qwen25vl.cli import answer, build_parser, load
from paddlemix_qwen25vl.demo import DEMO_IMAGE, DEMO_IMAGE_2


def main() -> None:
    parser = build_parser(__doc__)
    parser.add_argument("--image_file", nargs="+", default=[DEMO_IMAGE, DEMO_IMAGE_2])
    parser.set_defaults(question="Describe these images.")
    args = parser.parse_args()
    model, processor = load(args)
    content = [{"type": "image", "image": path} for path in args.image_file]
    messages = [{"role": "user", "content": content + [{"type": "text", "text": args.question}]}]
    answer(model, processor, [messages], args)


if __name__ == "__main__":
    main()
