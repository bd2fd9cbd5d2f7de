"""Configuration of Qwen2.5-VL: the vision tower and the Qwen2.5 decoder.

Both classes read the released ``config.json`` files unchanged (``rope_scaling`` with
``"type": "mrope"``, ``torch_dtype``, ``in_chans``, the token ids). Defaults are those of the
released 7B checkpoint; ``configs/`` holds the real files for 3B, 7B and 72B, and
:func:`config_preset` loads them by name.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Dict, List, Optional

from paddlenlp.transformers.configuration_utils import PretrainedConfig

from .resources import resource_path

__all__ = ["Qwen2_5_VLVisionConfig", "Qwen2_5_VLConfig", "config_preset", "check_attn_implementation", "PRESETS"]

ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")


def check_attn_implementation(name: str) -> None:
    """Raise ValueError unless ``name`` is one of :data:`ATTN_IMPLEMENTATIONS`."""
    if name not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation {name!r} is not one of {', '.join(ATTN_IMPLEMENTATIONS)}")

# Named presets: the released config.json files shipped in configs/.
PRESETS = {"3B": "qwen2_5_vl_3b", "7B": "qwen2_5_vl_7b", "72B": "qwen2_5_vl_72b"}
_CONFIGS_DIR = str(resource_path("configs"))


class Qwen2_5_VLVisionConfig(PretrainedConfig):
    """Vision tower: patch embed (Conv3D 2x14x14), window/full attention blocks, patch merger."""

    model_type = "qwen2_5_vl"

    def __init__(
        self,
        depth: int = 32,
        hidden_size: int = 1280,
        hidden_act: str = "silu",
        intermediate_size: int = 3420,
        num_heads: int = 16,
        in_channels: int = 3,
        patch_size: int = 14,
        spatial_merge_size: int = 2,
        temporal_patch_size: int = 2,
        tokens_per_second: float = 2,
        window_size: int = 112,
        out_hidden_size: int = 3584,
        fullatt_block_indexes: Optional[List[int]] = None,
        **kwargs: Any,
    ) -> None:
        # The released files spell it "in_chans" (and carry an unused "spatial_patch_size").
        in_channels = kwargs.pop("in_chans", in_channels)
        super().__init__(**kwargs)
        self.depth = depth
        self.hidden_size = hidden_size
        self.hidden_act = hidden_act
        self.intermediate_size = intermediate_size
        self.num_heads = num_heads
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.spatial_merge_size = spatial_merge_size
        self.temporal_patch_size = temporal_patch_size
        self.tokens_per_second = tokens_per_second
        self.window_size = window_size
        self.out_hidden_size = out_hidden_size
        self.fullatt_block_indexes = list(fullatt_block_indexes) if fullatt_block_indexes is not None else [7, 15, 23, 31]
        if hidden_size % num_heads != 0:
            raise ValueError(f"vision hidden_size {hidden_size} is not divisible by num_heads {num_heads}")


class Qwen2_5_VLConfig(PretrainedConfig):
    """Whole model: Qwen2.5 decoder settings at the top level, the vision tower in ``vision_config``."""

    model_type = "qwen2_5_vl"

    def __init__(
        self,
        vocab_size: int = 152064,
        hidden_size: int = 3584,
        intermediate_size: int = 18944,
        num_hidden_layers: int = 28,
        num_attention_heads: int = 28,
        num_key_value_heads: Optional[int] = 4,
        hidden_act: str = "silu",
        max_position_embeddings: int = 128000,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        use_cache: bool = True,
        tie_word_embeddings: bool = False,
        rope_theta: float = 1000000.0,
        use_sliding_window: bool = False,
        sliding_window: int = 32768,
        max_window_layers: int = 28,
        attention_dropout: float = 0.0,
        rope_scaling: Optional[Dict[str, Any]] = None,
        vision_config: Optional[Dict[str, Any] | Qwen2_5_VLVisionConfig] = None,
        image_token_id: int = 151655,
        video_token_id: int = 151656,
        vision_start_token_id: int = 151652,
        vision_end_token_id: int = 151653,
        vision_token_id: int = 151654,
        attn_implementation: str = "sdpa",
        recompute_vision: bool = False,
        recompute_decoder: bool = False,
        **kwargs: Any,
    ) -> None:
        if isinstance(vision_config, Qwen2_5_VLVisionConfig):
            self.vision_config = vision_config
        else:
            self.vision_config = Qwen2_5_VLVisionConfig(**(vision_config or {}))
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads if num_key_value_heads is not None else num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        # Kept for checkpoint compatibility (the released config.json files carry them) and never
        # read: every released Qwen2.5-VL sets use_sliding_window false and attends over the whole
        # context; _validate rejects true rather than silently attending without the window.
        self.use_sliding_window = use_sliding_window
        self.sliding_window = sliding_window
        self.max_window_layers = max_window_layers
        self.attention_dropout = attention_dropout
        self.rope_scaling = copy.deepcopy(rope_scaling) if rope_scaling is not None else {
            "type": "mrope",
            "mrope_section": [16, 24, 24],
        }
        self.image_token_id = image_token_id
        self.video_token_id = video_token_id
        self.vision_start_token_id = vision_start_token_id
        self.vision_end_token_id = vision_end_token_id
        self.vision_token_id = vision_token_id
        self.attn_implementation = attn_implementation
        self.recompute_vision = recompute_vision
        self.recompute_decoder = recompute_decoder
        kwargs.setdefault("bos_token_id", 151643)
        kwargs.setdefault("eos_token_id", 151645)
        super().__init__(tie_word_embeddings=tie_word_embeddings, use_cache=use_cache, **kwargs)
        self._validate()

    @classmethod
    def from_dict(cls, config_dict: Dict[str, Any], **kwargs: Any) -> "Qwen2_5_VLConfig":
        """Also read the transformers >= 4.52 layout, whose decoder settings sit in ``text_config``."""
        config_dict = dict(config_dict)
        text_config = config_dict.pop("text_config", None)
        if text_config:
            config_dict.update({k: v for k, v in text_config.items() if k not in ("model_type", "architectures")})
        return super().from_dict(config_dict, **kwargs)

    @property
    def head_dim(self) -> int:
        """Per-head width of the decoder attention (128 in every released size)."""
        return self.hidden_size // self.num_attention_heads

    @property
    def mrope_section(self) -> List[int]:
        """Rotary frequencies given to the (T, H, W) position axes; sums to head_dim / 2."""
        return list(self.rope_scaling["mrope_section"])

    def _validate(self) -> None:
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if sum(self.mrope_section) * 2 != self.head_dim:
            raise ValueError(
                f"rope_scaling.mrope_section {self.mrope_section} must sum to head_dim / 2 = {self.head_dim // 2}"
            )
        check_attn_implementation(self.attn_implementation)
        if self.use_sliding_window:
            raise ValueError(
                "use_sliding_window=True is not supported: this library has no sliding-window attention "
                "(every released Qwen2.5-VL sets it false)"
            )

    def to_dict(self, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        """Serialise with the vision config nested, as in the released files."""
        output = super().to_dict(*args, **kwargs)
        output["vision_config"] = self.vision_config.to_dict(*args, **kwargs)
        return output

    def to_diff_dict(self, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        """Save the vision config as its differences from the vision defaults, like the top level."""
        output = super().to_diff_dict(*args, **kwargs)
        output["vision_config"] = self.vision_config.to_diff_dict(*args, **kwargs)
        return output


def config_preset(name: str, **overrides: Any) -> Qwen2_5_VLConfig:
    """Load the released config of ``name`` in ``{"3B", "7B", "72B"}`` from ``configs/``."""
    key = name.upper()
    if key not in PRESETS:
        raise ValueError(f"unknown Qwen2.5-VL size {name!r}; choose one of {', '.join(PRESETS)}")
    config = Qwen2_5_VLConfig.from_pretrained(os.path.join(_CONFIGS_DIR, PRESETS[key]))
    for field, value in overrides.items():
        setattr(config, field, value)
    return config
