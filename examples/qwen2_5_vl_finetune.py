"""Supervised fine-tuning of Qwen2.5-VL (full or LoRA) on image/video/text chat data.

    python examples/qwen2_5_vl_finetune.py --model_name_or_path Qwen/Qwen2.5-VL-3B-Instruct \
        --meta_path configs/demo_chartqa_500.json --output_dir work_dirs/sft \
        --per_device_train_batch_size 1 --gradient_accumulation_steps 8 --learning_rate 1e-5 \
        --num_train_epochs 1 --save_steps 100 --bf16 --sharding stage2

Every paddlenlp TrainingArguments flag applies (see --help). On a machine without a GPU
sharding and bf16/fp16 are switched off with a notice, so the same command runs on CPU.
See examples/README_finetune.md.
"""

from __future__ import annotations

import logging
import os
import sys

import paddle
from paddle.utils import unique_name
from paddlenlp.trainer import PdArgumentParser, set_seed

from paddlemix_qwen25vl import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
from paddlemix_qwen25vl.demo import resolve_model_or_demo
from paddlemix_qwen25vl.training.arguments import DataArguments, FinetuneTrainingArguments, ModelArguments, has_gpu
from paddlemix_qwen25vl.training.collator import SFTCollator
from paddlemix_qwen25vl.training.data import SFTDataset
from paddlemix_qwen25vl.training.lora import add_lora
from paddlemix_qwen25vl.training.trainer import (
    DataSummaryCallback,
    Qwen2_5_VLTrainer,
    set_trainable,
    trainable_parameter_names,
)

logger = logging.getLogger("qwen2_5_vl_finetune")


def build_model(model_args: ModelArguments, training_args: FinetuneTrainingArguments):
    """The model to train (LoRA-wrapped with --lora), with the chosen weights trainable."""
    dtype = "bfloat16" if training_args.bf16 else "float16" if training_args.fp16 else "float32"
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        model_args.model_name_or_path,
        dtype=dtype,
        attn_implementation=model_args.attn_implementation,
        mp_degree=max(training_args.tensor_parallel_degree, 1),  # paddlenlp's "off" is -1; > 1 only on GPUs
    )
    model.config.use_cache = False
    if training_args.recompute:
        model.set_recompute(vision=not model_args.freeze_vit, decoder=not model_args.freeze_llm or model_args.lora)
    if model_args.lora:
        targets = [t.strip() for t in model_args.lora_target_modules.split(",") if t.strip()]
        model = add_lora(model, targets, model_args.lora_rank, model_args.lora_alpha, model_args.lora_dropout,
                         model_args.lora_path)
    set_trainable(model, model_args.freeze_vit, model_args.freeze_llm, model_args.tune_mm_mlp, lora=model_args.lora)
    names = trainable_parameter_names(model)
    if not names:
        raise ValueError("nothing to train: every parameter is frozen by the --freeze_* flags")
    trained = sum(int(p.numel()) for p in model.parameters() if not p.stop_gradient)
    total = sum(int(p.numel()) for p in model.parameters())
    logger.info(f"trainable parameters: {trained:,} of {total:,} ({100 * trained / total:.2f}%) in {len(names)} tensors")
    return model


def main(argv=None) -> None:
    """Parse the arguments (a list, sys.argv, or one JSON file) and train."""
    # Fixed parameter and optimizer-state names whatever ran before in this process, so that
    # the optimizer states saved in a checkpoint (keyed by those names) are found on resume.
    with unique_name.guard():
        train(argv)


def train(argv=None) -> None:
    parser = PdArgumentParser((ModelArguments, DataArguments, FinetuneTrainingArguments))
    if argv is None and len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(os.path.abspath(sys.argv[1]))
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if data_args.meta_path is None:
        parser.error("--meta_path is required")
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(levelname)8s] %(name)s - %(message)s")
    if not has_gpu():
        paddle.set_device("cpu")
    model_args.model_name_or_path = resolve_model_or_demo(model_args.model_name_or_path)
    set_seed(training_args.seed)

    model = build_model(model_args, training_args)
    processor = Qwen2_5_VLProcessor.from_pretrained(model_args.model_name_or_path)
    config = model.model.config if model_args.lora else model.config
    dataset = SFTDataset(
        data_args.meta_path,
        processor,
        config,
        max_seq_length=data_args.max_seq_length,
        image_resolution=data_args.image_resolution,
        strict=data_args.strict,
        seed=training_args.seed,
    )
    logger.info(f"{len(dataset)} training samples from {len(dataset.specs)} dataset(s) in {data_args.meta_path}")
    trainer = Qwen2_5_VLTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=SFTCollator(processor.tokenizer.pad_token_id, flatten=data_args.data_flatten),
        processor=processor,
        callbacks=[DataSummaryCallback(dataset)],
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()  # the final model: weights, config, tokenizer and processor files
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()


if __name__ == "__main__":
    main()
