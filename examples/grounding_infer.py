"""Locate objects: ask for boxes/points as JSON, map them back to the original image and draw them.

    python examples/grounding_infer.py --image_file street.jpg --object "every car" --output_image cars.png
"""

import os

from PIL import Image

from paddlemix_qwen25vl.cli import answer, build_parser, load
from paddlemix_qwen25vl.demo import DEMO_IMAGE
from paddlemix_qwen25vl.processing import fetch_image
from paddlemix_qwen25vl.grounding import draw_grounding, parse_grounding, to_original


def main() -> None:
    parser = build_parser(__doc__)
    parser.add_argument("--image_file", default=DEMO_IMAGE)
    parser.add_argument("--object", default="the shape", help="what to locate")
    parser.add_argument("--output_image", default="grounding_output.png", help="where to save the annotated picture")
    parser.set_defaults(question=None, max_new_tokens=256)
    args = parser.parse_args()
    args.question = args.question or f"Locate {args.object} in the image and output its bbox coordinates in JSON format."
    model, processor = load(args)
    messages = [{"role": "user", "content": [{"type": "image", "image": args.image_file}, {"type": "text", "text": args.question}]}]
    (text,) = answer(model, processor, [messages], args)

    original = Image.open(args.image_file)
    # The model answers in pixels of the image it saw: fetched (resized once), then the processor's size.
    fetched = fetch_image({"image": args.image_file})
    resized = processor.image_processor.resized_size(fetched.height, fetched.width)
    items = to_original(parse_grounding(text), resized, (original.height, original.width))
    print(f"found {len(items)} box(es)/point(s): {items}")
    draw_grounding(original, items).save(args.output_image)
    print(f"annotated image: {os.path.abspath(args.output_image)}")


if __name__ == "__main__":
    main()
