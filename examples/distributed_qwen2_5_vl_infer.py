"""Ask a question about one image with the model split over ``--mp_degree`` tensor-parallel ranks.

Start one process per rank with Paddle's launcher (or use shell/distributed_qwen2_5_vl_infer_*.sh):

    # GPUs (NCCL)
    python -m paddle.distributed.launch --devices 0,1,2,3 examples/distributed_qwen2_5_vl_infer.py \\
        --model_path Qwen/Qwen2.5-VL-7B-Instruct --mp_degree 4
    # CPU (gloo): one process per rank
    python -m paddle.distributed.launch --nproc_per_node 2 examples/distributed_qwen2_5_vl_infer.py --mp_degree 2

Each rank loads only its slice of the decoder (and the whole vision tower); every rank
generates the same tokens (logits are gathered on all ranks, sampling uses the same
``--seed``), and only rank 0 prints ``output_text:`` (and the ``--benchmark`` report).
Without ``--model_path`` the bundled demo checkpoint runs (it allows ``--mp_degree`` 1 or 2).
"""

import argparse
import contextlib
import os
from typing import Optional

import paddle
import paddle.distributed as dist

from paddlemix_qwen25vl import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
from paddlemix_qwen25vl.cli import answer, build_parser
from paddlemix_qwen25vl.demo import DEMO_IMAGE, resolve_model_or_demo
from paddlemix_qwen25vl.distributed import check_tensor_parallel_config, is_main_process, leave_together
from paddlemix_qwen25vl.loading import resolve_model_path
from paddlemix_qwen25vl.quantization import resolve_weight_kind
from paddlemix_qwen25vl.runtime import set_device


def main() -> None:
    parser = build_parser(__doc__)
    parser.add_argument("--image_file", default=DEMO_IMAGE)
    parser.add_argument("--mp_degree", type=int, default=int(os.environ.get("PADDLE_TRAINERS_NUM", "1")),
                        help="tensor-parallel ranks (default: the number of launched processes)")
    parser.add_argument("--seed", type=int, default=42, help="sampling seed, the same on every rank")
    parser.set_defaults(max_new_tokens=512)  # PaddleMIX's
    args = parser.parse_args()
    if args.stream:
        raise SystemExit("--stream is not supported with tensor parallelism; drop it")
    try:
        set_device(args.device)  # on GPUs the launcher's FLAGS_selected_gpus picks each rank's card
    except ValueError as err:
        raise SystemExit(str(err)) from None
    if args.mp_degree > 1:
        launched = int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))
        if launched < args.mp_degree:
            raise SystemExit(
                f"--mp_degree {args.mp_degree} needs {args.mp_degree} processes: start this script with python -m "
                f"paddle.distributed.launch --nproc_per_node {args.mp_degree} (CPU) or --devices 0,1,... (GPU)"
            )
        dist.init_parallel_env()
    # Every rank runs the same generation (the collectives need all of them); only rank 0 speaks.
    with contextlib.ExitStack() as stack:
        if not is_main_process():
            stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
            args.benchmark_json = None
        run(args, resolve_checkpoint(args.model_path))
    leave_together()


def resolve_checkpoint(model_path: Optional[str]) -> str:
    """The checkpoint directory; rank 0 resolves it first so that the demo (or a download) happens once."""
    if is_main_process():
        path = resolve_model_path(resolve_model_or_demo(model_path))
    if dist.is_initialized():
        dist.barrier()
    return path if is_main_process() else resolve_model_path(resolve_model_or_demo(model_path))


def run(args: argparse.Namespace, path: str) -> None:
    """Load this rank's share of the model and answer the question about ``--image_file``."""
    try:  # a wrong degree (or a quant_type under tensor parallelism) fails here, before any weight is read
        config = Qwen2_5_VLConfig.from_pretrained(path)
        check_tensor_parallel_config(config, args.mp_degree)
        resolve_weight_kind(args.quant_type, None, config, args.mp_degree)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        path, dtype=args.dtype, attn_implementation=args.attn_implementation, mp_degree=args.mp_degree,
        quant_type=args.quant_type,
    )
    processor = Qwen2_5_VLProcessor.from_pretrained(path, min_pixels=args.min_pixels, max_pixels=args.max_pixels)
    paddle.seed(args.seed)  # the same sampled tokens on every rank
    messages = [{"role": "user", "content": [{"type": "image", "image": args.image_file}, {"type": "text", "text": args.question}]}]
    answer(model, processor, [messages], args)


if __name__ == "__main__":
    main()
