"""One of 4 processes (2 data-parallel replicas of tensor-parallel degree 2) of the Trainer
save/resume test in tests/test_gpu_paths.py: the Trainer's own _save and _load_from_checkpoint,
called as paddlenlp calls them (fleet itself needs GPUs, so the trainer object is a stand-in
holding the model and the arguments those two methods read)."""

import argparse
import json
import os
from types import SimpleNamespace

import numpy as np
import paddle
import paddle.distributed as dist

from paddlemix_qwen25vl import Qwen2_5_VLForConditionalGeneration
from paddlemix_qwen25vl.distributed import leave_together
from paddlemix_qwen25vl.training.trainer import Qwen2_5_VLTrainer

MP = 2


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(args.model, mp_degree=MP)
    rank = dist.get_rank()
    saved = os.path.join(args.out, "saved")
    # paddlenlp: should_save on process 0; should_save_model_state on the first replica's mp ranks.
    trainer = SimpleNamespace(model=model, processor=None, args=SimpleNamespace(should_save=rank == 0, output_dir=args.out))
    values = {name: param.numpy().copy() for name, param in model.named_parameters()}
    if rank < MP:
        Qwen2_5_VLTrainer._save(trainer, saved)
    dist.barrier()
    for param in model.parameters():
        param.set_value(paddle.zeros(param.shape, dtype=param.dtype))
    Qwen2_5_VLTrainer._load_from_checkpoint(trainer, saved)
    restored = all(np.array_equal(param.numpy(), values[name]) for name, param in model.named_parameters())
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump({"restored": restored, "mp_rank": model.mp.rank}, f)
    leave_together()


if __name__ == "__main__":
    main()
