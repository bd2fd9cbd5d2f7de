"""The paddlenlp Trainer adapted to this model: what is trained, how checkpoints are written
and read back, and the end-of-training data summary."""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional

import paddle
from paddlenlp.peft import LoRAModel
from paddlenlp.trainer import Trainer, TrainerCallback
from paddlenlp.trainer.trainer_utils import ShardingOption, get_last_checkpoint
from paddlenlp.transformers.model_utils import unwrap_model

from ..distributed.checkpoints import load_model_weights

__all__ = ["Qwen2_5_VLTrainer", "DataSummaryCallback", "set_trainable", "trainable_parameter_names"]

logger = logging.getLogger(__name__)

TRAINING_ARGS_NAME = "training_args.bin"


def set_trainable(model: paddle.nn.Layer, freeze_vit: bool, freeze_llm: bool, tune_mm_mlp: bool, lora: bool = False) -> None:
    """Choose the trained weights of a (possibly LoRA-wrapped) Qwen2.5-VL.

    ViT blocks and patch embedding: unless ``freeze_vit``. Merger: unless ``freeze_vit``, or
    with ``tune_mm_mlp``. Language model: unless ``freeze_llm``; with ``lora`` only its adapters.
    """
    for name, param in model.named_parameters():
        name = name[len("model."):] if isinstance(model, LoRAModel) else name
        if "lora_A" in name or "lora_B" in name:
            train = not freeze_llm
        elif name.startswith("visual.merger."):
            train = not freeze_vit or tune_mm_mlp
        elif name.startswith("visual."):
            train = not freeze_vit
        else:  # embeddings, decoder layers, final norm, untied head
            train = not (freeze_llm or lora)
        param.stop_gradient = not train


def trainable_parameter_names(model: paddle.nn.Layer) -> List[str]:
    """Names of the parameters the optimizer will update."""
    return [name for name, param in model.named_parameters() if not param.stop_gradient]


class DataSummaryCallback(TrainerCallback):
    """Logs the dataset's skipped / dropped / truncated counts when training ends."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def on_train_end(self, args, state, control, **kwargs) -> None:
        logger.info(self.dataset.stats.summary())


class Qwen2_5_VLTrainer(Trainer):
    """Trainer whose checkpoints are this library's: ``save_pretrained`` safetensors plus the
    tokenizer and processor files (so the inference scripts load a checkpoint directly), and
    resumption reads them back with :func:`~paddlemix_qwen25vl.loading.load_weights`.
    LoRA runs keep paddlenlp's adapter format (``lora_model_state.pdparams``, ``lora_config.json``)."""

    def __init__(self, *args: Any, processor: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.processor = processor

    def _get_train_sampler(self) -> Optional[paddle.io.Sampler]:
        """One process: the multi-device sampler with one replica. paddlenlp's single-process
        ``BatchSampler`` shuffles from the global RNG, so a resumed run (which skips the trained
        epochs without drawing their permutations) saw other samples than the uninterrupted
        run; this one shuffles epoch ``e`` with ``RandomState(e)`` and the trainer sets ``e``."""
        if self.args.world_size > 1 or self.train_dataset is None:
            return super()._get_train_sampler()
        return paddle.io.DistributedBatchSampler(
            self.train_dataset,
            batch_size=self.args.per_device_train_batch_size,
            num_replicas=1,
            rank=0,
            shuffle=True,
            drop_last=self.args.dataloader_drop_last,
        )

    def compute_loss(self, model, inputs: Dict[str, paddle.Tensor], return_outputs: bool = False):
        """The model's loss with the vocabulary projection of supervised positions only
        (``return_logits=False``): full logits over 151,936 tokens at every position would
        dominate time and memory when few tokens are labelled. Training never needs a KV cache."""
        outputs = model(**inputs, use_cache=False, return_logits=False)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def save_model(self, output_dir: Optional[str] = None, merge_tensor_parallel: Optional[bool] = False) -> None:
        """paddlenlp's ``save_model``; under sharding stage3 the frozen parameters are gathered too.

        Stage3 slices every parameter over 2^20 elements, frozen or not, and paddlenlp gathers
        only the trainable ones before saving: a frozen ViT would be written from cleared
        tensors. Every rank takes part in the gather (it is a collective), as in paddlenlp.
        LoRA runs save their adapters only, which are trainable.
        """
        frozen = not isinstance(self.model, LoRAModel) and any(p.stop_gradient for p in self.model.parameters())
        if frozen and ShardingOption.FULL_SHARD in self.args.sharding:
            self.model_wrapped.get_all_parameters(convert2cpu=True, with_freeze_param=True)
        super().save_model(output_dir, merge_tensor_parallel)

    def _save(self, output_dir: Optional[str] = None, state_dict=None, merge_tensor_parallel: bool = False) -> None:
        """Called on the processes that hold a full replica's state (``should_save_model_state``):
        process 0, and under tensor parallelism every rank of the first group, each writing its slices."""
        output_dir = output_dir or self.args.output_dir
        model = unwrap_model(self.model)
        if isinstance(self.model, LoRAModel):
            super()._save(output_dir, state_dict, merge_tensor_parallel)
        elif self.args.should_save or model.mp.world_size > 1:
            os.makedirs(output_dir, exist_ok=True)
            logger.info(f"Saving model checkpoint to {output_dir}")
            model.save_pretrained(output_dir)
            if self.args.should_save:
                paddle.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
        if self.args.should_save and self.processor is not None:
            self.processor.save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint=None) -> None:
        if isinstance(self.model, LoRAModel) or not resume_from_checkpoint:
            return super()._load_from_checkpoint(resume_from_checkpoint)
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"no checkpoint-* folder in {self.args.output_dir} to resume from")
        logger.info(f"Loading model from {resume_from_checkpoint}")
        load_model_weights(unwrap_model(self.model), resume_from_checkpoint)  # this rank's folder under tensor parallelism
