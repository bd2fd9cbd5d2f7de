"""Fold trained LoRA adapters into the base weights and write a full checkpoint (PaddleMIX's command line).

    python examples/merge_lora_params.py --model_name_or_path Qwen/Qwen2.5-VL-3B-Instruct \
        --lora_path work_dirs/lora [--merge_model_path work_dirs/merged] [--device gpu]

As in PaddleMIX, --merge_model_path defaults to --lora_path and --device to gpu (CPU, with a
notice, when there is none). The output loads with ``from_pretrained`` and holds the
tokenizer and processor files (taken from --lora_path, else from the base checkpoint).
"""

from __future__ import annotations

import argparse
import os

from paddlemix_qwen25vl import Qwen2_5_VLProcessor, resolve_model_path
from paddlemix_qwen25vl.tools.common import tool_device
from paddlemix_qwen25vl.training.lora import merge_lora


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True, help="the base checkpoint the adapters were trained on")
    parser.add_argument("--lora_path", required=True, help="directory with lora_config.json and lora_model_state.pdparams")
    parser.add_argument("--merge_model_path", default=None, help="output directory of the merged checkpoint (default: --lora_path)")
    parser.add_argument("--device", default="gpu", help="gpu (default; CPU when there is none), gpu:N or cpu")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default), bfloat16 or float16")
    args = parser.parse_args(argv)
    tool_device(args.device)
    output = args.merge_model_path or args.lora_path
    base = resolve_model_path(args.model_name_or_path)
    merge_lora(base, args.lora_path, output, dtype=args.dtype)
    has_processor = os.path.exists(os.path.join(args.lora_path, "preprocessor_config.json"))
    Qwen2_5_VLProcessor.from_pretrained(args.lora_path if has_processor else base).save_pretrained(output)
    print(f"merged checkpoint written to {output}")


if __name__ == "__main__":
    main()
