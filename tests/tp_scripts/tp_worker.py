"""One tensor-parallel rank of the CPU tests (launched twice by tests/test_tensor_parallel.py).

For every checkpoint given: load it with ``mp_degree`` ranks, then write (rank 0) logits and
greedy tokens, (every rank) gradients of a few split and replicated parameters and the
rank's peak memory, and optionally save a per-rank checkpoint for the merge test.
"""

import argparse
import json
import os
import sys

import numpy as np
import paddle

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: reference.py

from reference import TOKENS, build_sample, pixels_for  # noqa: E402

from paddlemix_qwen25vl import Qwen2_5_VLForConditionalGeneration  # noqa: E402

GRIDS = [(1, 4, 6), (1, 8, 10)]
NEW_TOKENS = 8
GRAD_PARAMS = (
    "model.embed_tokens.weight",  # vocabulary-parallel
    "model.layers.0.self_attn.q_proj.weight",  # column-parallel
    "model.layers.0.self_attn.k_proj.bias",
    "model.layers.1.self_attn.o_proj.weight",  # row-parallel
    "model.layers.1.mlp.down_proj.weight",
    "model.norm.weight",  # replicated
    "visual.blocks.0.attn.qkv.weight",
    "lm_head.weight",  # untied only
)


def tp_inputs():
    """Two images in one prompt, plus labels for the gradient check."""
    rng = np.random.default_rng(3)
    ids = build_sample(rng, [("image", g) for g in GRIDS], [3, 2, 4])
    input_ids = np.array([ids], dtype=np.int64)
    labels = np.where(np.isin(input_ids, [TOKENS["image_token_id"]]), -100, input_ids)
    return dict(input_ids=input_ids, pixel_values=pixels_for(rng, GRIDS), image_grid_thw=np.array(GRIDS, dtype=np.int64)), labels


def run(model):
    inputs, labels = tp_inputs()
    tensors = {k: paddle.to_tensor(v) for k, v in inputs.items()}
    with paddle.no_grad():
        logits = model(**tensors, use_cache=False).logits.numpy()
    tokens, _ = model.generate(**tensors, max_new_tokens=NEW_TOKENS, decode_strategy="greedy_search",
                               eos_token_id=TOKENS["eos_token_id"], pad_token_id=TOKENS["pad_token_id"])
    loss = model(**tensors, labels=paddle.to_tensor(labels), use_cache=False).loss
    loss.backward()
    params = dict(model.named_parameters())
    grads = {name: params[name].grad.numpy() for name in GRAD_PARAMS if name in params}
    model.clear_gradients()
    return logits, tokens.numpy(), float(loss), grads


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--checkpoints", nargs="+", required=True, help="NAME=PATH")
    parser.add_argument("--save", default=None, help="NAME whose mp model is saved per rank to OUT/NAME_saved")
    parser.add_argument("--mp_degree", type=int, default=2)
    args = parser.parse_args()
    for item in args.checkpoints:
        name, path = item.split("=", 1)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, mp_degree=args.mp_degree)
        rank = model.mp.rank
        param_bytes = sum(int(np.prod(p.shape)) * 4 for p in model.parameters())
        logits, tokens, loss, grads = run(model)
        prefix = os.path.join(args.out, f"{name}.rank{rank}")
        np.savez(prefix + ".grads.npz", **grads)
        with open(prefix + ".json", "w") as f:
            json.dump({"loss": loss, "param_bytes": param_bytes, "peak_rss_mib": peak_rss_mib()}, f)
        if rank == 0:
            np.save(os.path.join(args.out, f"{name}.logits.npy"), logits)
            np.save(os.path.join(args.out, f"{name}.tokens.npy"), tokens)
        if name == args.save:
            model.save_pretrained(os.path.join(args.out, f"{name}_saved"))
        del model


if __name__ == "__main__":
    main()
