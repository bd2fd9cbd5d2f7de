"""``python -m paddlemix_qwen25vl``: the main job, the single-image demo (same flags as
``examples/single_image_infer.py``)."""

from .cli import single_image_main

if __name__ == "__main__":
    single_image_main()
