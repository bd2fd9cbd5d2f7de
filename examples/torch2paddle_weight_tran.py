"""Convert a Hugging Face Qwen2.5-VL checkpoint (3B, 7B or 72B; one file or sharded) to Paddle format.

    python examples/torch2paddle_weight_tran.py \
        --src_dir torch_models/Qwen2.5-VL-7B-Instruct --dest_dir paddle_models/Qwen2.5-VL-7B-Instruct

PaddleMIX's flags: --src_dir/--dest_dir (same defaults), --src_prefix/--dst_prefix (rename
keys), --overwrite, --skip_config_update (else config.json and generation_config.json get
``torch_dtype`` -> ``dtype`` and lose ``transformers_version``), --model_size. Which tensors
are transposed is decided per tensor (every Linear weight; lm_head only when untied), so
--model_size is only a check that the source is that release.
"""

import argparse
import json
import os

from paddlemix_qwen25vl.configuration import PRESETS, config_preset
from paddlemix_qwen25vl.convert import convert_hf_to_paddle


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src_dir", default="torch_models/Qwen2.5-VL-3B-Instruct", help="Hugging Face checkpoint directory (safetensors)")
    parser.add_argument("--dest_dir", default="paddle_models/Qwen2.5-VL-3B-Instruct", help="where to write the Paddle-format checkpoint")
    parser.add_argument(
        "--model_size",
        choices=sorted(PRESETS),
        default=None,
        help="optional check that the source is this size (its config must match configs/)",
    )
    parser.add_argument("--src_prefix", default="xxxxx.", help="key prefix to replace (PaddleMIX's default matches nothing)")
    parser.add_argument("--dst_prefix", default="xxxxx.", help="what replaces --src_prefix")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty destination directory")
    parser.add_argument("--skip_config_update", action="store_true", help="copy config files unchanged")
    return parser.parse_args(argv)


def check_size(src_dir: str, model_size: str) -> None:
    """Refuse a source whose decoder shape is not the named release's."""
    with open(os.path.join(src_dir, "config.json")) as f:
        source = json.load(f)
    source = source.get("text_config", source)  # transformers >= 4.52 nests the decoder settings
    expected = config_preset(model_size)
    for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads"):
        if source.get(field) != getattr(expected, field):
            raise SystemExit(
                f"--model_size {model_size}: {src_dir}/config.json has {field}={source.get(field)}, "
                f"expected {getattr(expected, field)}"
            )


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.model_size:
        check_size(args.src_dir, args.model_size)
    convert_hf_to_paddle(args.src_dir, args.dest_dir, overwrite=args.overwrite, src_prefix=args.src_prefix,
                         dst_prefix=args.dst_prefix, update_config=not args.skip_config_update)
    print(f"converted {args.src_dir} -> {args.dest_dir}")


if __name__ == "__main__":
    main()
