"""Tiny random reference models (transformers 4.51.3, PyTorch CPU) and matching inputs (``make_inputs``).

The parity tests save these with ``save_pretrained`` and load them with this library, so
both sides hold exactly the same weights.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

# Small vocabulary with the special ids moved inside it (the model reads them from config).
VOCAB = 384
TOKENS = dict(
    bos_token_id=300,
    eos_token_id=301,
    pad_token_id=302,
    vision_start_token_id=303,
    vision_end_token_id=304,
    vision_token_id=305,
    image_token_id=306,
    video_token_id=307,
)
TEXT_MAX = 290  # ordinary text ids are drawn below this


def tiny_config_dict(tie_word_embeddings: bool) -> Dict:
    """A config in the released layout: 4 vision blocks (1 and 3 full attention), GQA 4/2, mrope [2, 3, 3]."""
    return dict(
        architectures=["Qwen2_5_VLForConditionalGeneration"],
        model_type="qwen2_5_vl",
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=112,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        tie_word_embeddings=tie_word_embeddings,
        rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
        sliding_window=4096,
        use_sliding_window=False,
        max_window_layers=2,
        attention_dropout=0.0,
        initializer_range=0.02,
        torch_dtype="float32",
        vision_config=dict(
            depth=4,
            hidden_size=64,
            hidden_act="silu",
            intermediate_size=96,
            num_heads=4,
            in_chans=3,
            out_hidden_size=64,
            patch_size=14,
            spatial_merge_size=2,
            spatial_patch_size=14,
            window_size=112,
            fullatt_block_indexes=[1, 3],
            tokens_per_second=2,
            temporal_patch_size=2,
        ),
        **TOKENS,
    )


def build_reference_model(tie_word_embeddings: bool, seed: int = 0):
    """A random transformers Qwen2.5-VL in float32 with the eager attention path."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(**tiny_config_dict(tie_word_embeddings))
    config._attn_implementation = "eager"
    config.vision_config._attn_implementation = "eager"
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    # Larger-than-init weights so that every path (rotary, windows, merger) moves the outputs.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or "ln_q" in name:
                param.add_(0.1 * torch.randn_like(param))
            else:
                param.normal_(0.0, 0.08)
    return model


def vision_item(token_id: int, grid: Sequence[int]) -> List[int]:
    """vision_start, t*h*w/4 pad tokens, vision_end."""
    t, h, w = grid
    return [TOKENS["vision_start_token_id"]] + [token_id] * (t * h * w // 4) + [TOKENS["vision_end_token_id"]]


def build_sample(
    rng: np.random.Generator, items: Sequence[Tuple[str, Sequence[int]]], text_lens: Sequence[int]
) -> List[int]:
    """Token ids: text runs of ``text_lens`` interleaved with ``items`` [("image" | "video", grid)]."""
    assert len(text_lens) == len(items) + 1
    ids: List[int] = list(rng.integers(0, TEXT_MAX, text_lens[0]))
    for (kind, grid), n_text in zip(items, text_lens[1:]):
        token = TOKENS["image_token_id"] if kind == "image" else TOKENS["video_token_id"]
        ids += vision_item(token, grid)
        ids += list(rng.integers(0, TEXT_MAX, n_text))
    return [int(i) for i in ids]


def pixels_for(rng: np.random.Generator, grids: Sequence[Sequence[int]]) -> Optional[np.ndarray]:
    """Random pixel rows [sum t*h*w, 1176] for ``grids`` (None when there are none)."""
    if not grids:
        return None
    total = sum(int(np.prod(g)) for g in grids)
    return rng.standard_normal((total, 3 * 2 * 14 * 14)).astype(np.float32)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> Tuple[np.ndarray, np.ndarray]:
    """Left-padded ids and attention mask [B, max_len]."""
    length = max(len(r) for r in rows)
    ids = np.full((len(rows), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, length - len(row):] = row
        mask[i, length - len(row):] = 1
    return ids, mask


def make_inputs(rows: Sequence[Tuple[Sequence, Sequence[int], Sequence[float]]], seed: int = 0) -> Dict[str, np.ndarray]:
    """numpy inputs for one case: ids/mask left-padded, images before videos in order of appearance."""
    rng = np.random.default_rng(seed)
    id_rows, image_grids, video_grids, seconds = [], [], [], []
    for items, text_lens, row_seconds in rows:
        id_rows.append(build_sample(rng, items, text_lens))
        image_grids += [g for kind, g in items if kind == "image"]
        video_grids += [g for kind, g in items if kind == "video"]
        seconds += row_seconds
    ids, mask = left_pad(id_rows, TOKENS["pad_token_id"])
    # Partly supervised: each row's first real tokens are not, so that no label is predicted
    # from a padded position (whose logits carry no meaning in any implementation).
    first_real = np.argmax(mask == 1, axis=1)[:, None]
    supervised = (mask == 1) & (np.arange(ids.shape[1])[None] >= first_real + 3)
    labels = np.where(supervised, ids, -100)
    inputs = dict(input_ids=ids, attention_mask=mask, labels=labels)
    if image_grids:
        inputs.update(pixel_values=pixels_for(rng, image_grids), image_grid_thw=np.array(image_grids, dtype=np.int64))
    if video_grids:
        inputs.update(
            pixel_values_videos=pixels_for(rng, video_grids),
            video_grid_thw=np.array(video_grids, dtype=np.int64),
            second_per_grid_ts=np.array(seconds, dtype=np.float32),
        )
    return inputs
