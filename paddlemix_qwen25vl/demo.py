"""The bundled demo: a small Qwen2.5-VL checkpoint with the real tokenizer and processor files,
and the demo image and video, so that every script runs offline with no real weights.

The checkpoint is built on first use (seeded, so every machine builds the same weights) in
``$PADDLEMIX_DEMO_DIR`` or ``~/.cache/paddlemix_qwen25vl/``. When the package ships trained
demo weights (``examples/assets/demo_weights``, see :mod:`.resources`), those are used instead of
the random initialisation.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from typing import Optional

import paddle
from tqdm.auto import tqdm

from .configuration import Qwen2_5_VLConfig, Qwen2_5_VLVisionConfig
from .resources import resource_path

__all__ = ["demo_config", "build_demo_checkpoint", "save_random_demo_model", "demo_checkpoint", "DEMO_IMAGE", "DEMO_IMAGE_2", "DEMO_VIDEO", "DEMO_QUESTION", "resolve_model_or_demo"]

DEMO_ASSETS = str(resource_path("examples/assets"))
DEMO_IMAGE = os.path.join(DEMO_ASSETS, "demo_image.png")
DEMO_IMAGE_2 = os.path.join(DEMO_ASSETS, "demo_image2.png")
DEMO_VIDEO = os.path.join(DEMO_ASSETS, "demo_video.mp4")
DEMO_QUESTION = "What shape is this?"  # one of the two questions the demo model was trained on
SHIPPED_WEIGHTS = os.path.join(DEMO_ASSETS, "demo_weights")
DEMO_VERSION = "v3"
# Small enough to run in seconds on a CPU; the processor keeps images small too.
DEMO_MAX_PIXELS = 448 * 448


def demo_config() -> Qwen2_5_VLConfig:
    """A 4-block vision tower and a 4-layer, 64-wide decoder with the real vocabulary, token ids
    and rope layout: small enough to run in seconds on a CPU and to ship trained weights in
    float16 (the 151,936 x 64 embedding dominates them)."""
    vision = Qwen2_5_VLVisionConfig(
        depth=4,
        hidden_size=128,
        intermediate_size=256,
        num_heads=4,
        out_hidden_size=64,
        fullatt_block_indexes=[1, 3],
        tokens_per_second=2,
    )
    return Qwen2_5_VLConfig(
        vocab_size=151936,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=2,  # divisible by 2: the tensor-parallel scripts run the demo with mp_degree 2
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]},
        vision_config=vision,
        dtype="float32",
    )


def save_random_demo_model(path: str, seed: int = 0) -> None:
    """The demo architecture with seeded random weights and the chat's eos/pad ids, saved to ``path``."""
    from .modeling import Qwen2_5_VLForConditionalGeneration
    from .processing.special_tokens import ADDED_TOKEN_IDS, EOS_TOKEN, PAD_TOKEN

    paddle.seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(demo_config())
    model.generation_config.eos_token_id = [ADDED_TOKEN_IDS[EOS_TOKEN], ADDED_TOKEN_IDS[PAD_TOKEN]]
    model.generation_config.pad_token_id = ADDED_TOKEN_IDS[PAD_TOKEN]
    model.save_pretrained(path)


def build_demo_checkpoint(path: str, seed: int = 0) -> str:
    """Write the demo checkpoint (config, weights, tokenizer, processor, generation config) to ``path``."""
    from .processing import MIXQwen2_5_Tokenizer, Qwen2_5_VLImageProcessor, Qwen2_5_VLProcessor, build_tokenizer_files

    tmp = path + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    steps = tqdm(total=3, desc="Building demo checkpoint", unit="step", disable=None)
    build_tokenizer_files(tmp)
    steps.update(1)
    processor = Qwen2_5_VLProcessor(
        Qwen2_5_VLImageProcessor(max_pixels=DEMO_MAX_PIXELS), MIXQwen2_5_Tokenizer.from_pretrained(tmp)
    )
    processor.save_pretrained(tmp)
    steps.update(1)
    if os.path.isdir(SHIPPED_WEIGHTS):
        for name in os.listdir(SHIPPED_WEIGHTS):
            shutil.copy2(os.path.join(SHIPPED_WEIGHTS, name), os.path.join(tmp, name))
    else:
        save_random_demo_model(tmp, seed)
    steps.update(1)
    steps.close()
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


def _shipped_weights_tag() -> str:
    """"random", or a digest of the shipped weights: retrained weights get a fresh cache entry."""
    if not os.path.isdir(SHIPPED_WEIGHTS):
        return "random"
    digest = hashlib.sha256()
    for name in sorted(os.listdir(SHIPPED_WEIGHTS)):
        with open(os.path.join(SHIPPED_WEIGHTS, name), "rb") as f:
            digest.update(f.read())
    return "trained-" + digest.hexdigest()[:12]


def demo_checkpoint(cache_dir: Optional[str] = None) -> str:
    """Path of the demo checkpoint, built on first use."""
    root = cache_dir or os.environ.get("PADDLEMIX_DEMO_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "paddlemix_qwen25vl"
    )
    path = os.path.join(root, f"demo-{DEMO_VERSION}-{_shipped_weights_tag()}")
    if not os.path.exists(os.path.join(path, "config.json")):
        os.makedirs(root, exist_ok=True)
        build_demo_checkpoint(path)
    return path


def resolve_model_or_demo(model_path: Optional[str]) -> str:
    """``model_path`` when given, else the bundled demo checkpoint (printing which one runs)."""
    if model_path:
        return model_path
    path = demo_checkpoint()
    print(f"No --model_path given: using the bundled demo checkpoint at {path} "
          "(pass --model_path DIR or a hub id such as Qwen/Qwen2.5-VL-3B-Instruct for real weights)")
    return path
