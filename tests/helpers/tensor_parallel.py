"""The tensor-parallel checks' workload (run by tests/tp_scripts/tp_worker.py on every rank and
by the tests in one process) and the environment of the launched workers."""

import os
from typing import Dict, Tuple

import numpy as np
import paddle

from .paths import REPO
from .reference import TOKENS, build_sample, pixels_for

# One thread per rank: the ranks share the machine's cores.
WORKER_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PADDLEMIX_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}

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


def tp_inputs() -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """Two images in one prompt, plus labels for the gradient check."""
    rng = np.random.default_rng(3)
    ids = build_sample(rng, [("image", g) for g in GRIDS], [3, 2, 4])
    input_ids = np.array([ids], dtype=np.int64)
    labels = np.where(np.isin(input_ids, [TOKENS["image_token_id"]]), -100, input_ids)
    return dict(input_ids=input_ids, pixel_values=pixels_for(rng, GRIDS), image_grid_thw=np.array(GRIDS, dtype=np.int64)), labels


def run_workload(model) -> Tuple[np.ndarray, np.ndarray, float, Dict[str, np.ndarray]]:
    """(logits, greedy tokens, loss, gradients of GRAD_PARAMS) of ``model`` on ``tp_inputs``."""
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
