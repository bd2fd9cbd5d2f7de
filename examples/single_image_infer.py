"""Ask a question about one image (the main job; also ``python -m paddlemix_qwen25vl``).

    python examples/single_image_infer.py                      # bundled demo model and image ("What shape is this?")
    python examples/single_image_infer.py --model_path Qwen/Qwen2.5-VL-3B-Instruct --image_file photo.jpg
"""

from paddlemix_qwen25vl.cli import single_image_main

if __name__ == "__main__":
    single_image_main()
