"""Ask a question about one image.

    python examples/single_image_infer.py                      # bundled demo model and image ("What shape is this?")
    python examples/single_image_infer.py --model_path Qwen/Qwen2.5-VL-3B-Instruct --image_file photo.jpg
"""

from paddlemix_qwen25vl.cli import answer, build_parser, load
from paddlemix_qwen25vl.demo import DEMO_IMAGE, DEMO_QUESTION


def main() -> None:
    parser = build_parser(__doc__)
    parser.add_argument("--image_file", default=DEMO_IMAGE)
    parser.set_defaults(question=None)
    args = parser.parse_args()
    if args.question is None:  # the demo model was trained on shape and colour questions only
        args.question = DEMO_QUESTION if args.model_path is None else "Describe this image."
    model, processor = load(args)
    messages = [{"role": "user", "content": [{"type": "image", "image": args.image_file}, {"type": "text", "text": args.question}]}]
    answer(model, processor, [messages], args)


if __name__ == "__main__":
    main()
