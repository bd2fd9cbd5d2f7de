"""Supervised fine-tuning of Qwen2.5-VL (full or LoRA) on image/video/text chat data.

    python examples/qwen2_5_vl_finetune.py --do_train --model_name_or_path Qwen/Qwen2.5-VL-3B-Instruct \
        --meta_path configs/demo_chartqa_500.json --output_dir work_dirs/sft --overwrite_output_dir True \
        --per_device_train_batch_size 1 --gradient_accumulation_steps 8 --learning_rate 1e-5 \
        --num_train_epochs 1 --save_steps 100 --freeze_vit True --bf16 True --fp16_opt_level O2 --sharding stage2

PaddleMIX's flags and every paddlenlp TrainingArguments flag apply (see --help); the shell/
recipes are PaddleMIX's. As in PaddleMIX, the weights are half precision with --bf16/--fp16
and --fp16_opt_level O2, float32 (under paddlenlp's O1 autocast) otherwise; training resumes
from the last checkpoint in --output_dir unless --overwrite_output_dir, and nothing is trained
without --do_train. On a machine without a GPU, sharding, bf16/fp16 and master gradients are
switched off with a notice, so the same command runs on CPU. See examples/README_finetune.md.
"""

from __future__ import annotations

import logging
import os
import sys

import paddle
from paddle.utils import unique_name
from paddlenlp.trainer import PdArgumentParser, set_seed
from paddlenlp.trainer.trainer_utils import get_last_checkpoint

from paddlemix_qwen25vl import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
from paddlemix_qwen25vl.demo import resolve_model_or_demo
from paddlemix_qwen25vl.runtime import has_gpu
from paddlemix_qwen25vl.training.arguments import (
    DEFAULT_LORA_TARGETS,
    DataArguments,
    FinetuneTrainingArguments,
    ModelArguments,
    warn_no_effect,
)
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
# What the shell/ recipes put in --output_dir before training starts (the launcher's and tee's logs).
LAUNCHER_FILES = {"training_log.txt", "paddle_distributed_logs"}


def weight_dtype(training_args: FinetuneTrainingArguments) -> str:
    """PaddleMIX's rule: half-precision weights only under --fp16_opt_level O2 (O1 autocasts float32 weights)."""
    half = "bfloat16" if training_args.bf16 else "float16" if training_args.fp16 else None
    if training_args.fp16_opt_level != "O2":
        return "float32"
    if half is None and has_gpu():
        raise ValueError("--fp16_opt_level O2 needs --bf16 or --fp16")
    return half or "float32"  # CPU: half precision was switched off with a notice


def last_checkpoint(training_args: FinetuneTrainingArguments) -> str | None:
    """The checkpoint to resume from: --resume_from_checkpoint, else (as in PaddleMIX) the last
    checkpoint-N in --output_dir unless --overwrite_output_dir; a non-empty --output_dir with no
    checkpoint is refused unless --overwrite_output_dir."""
    if training_args.resume_from_checkpoint is not None:
        return training_args.resume_from_checkpoint
    out = training_args.output_dir
    if training_args.overwrite_output_dir or not os.path.isdir(out):
        return None
    found = get_last_checkpoint(out)
    if found is None and set(os.listdir(out)) - LAUNCHER_FILES:
        raise ValueError(f"output directory {out} already exists and is not empty; use --overwrite_output_dir True")
    if found is not None:
        logger.info(f"resuming from {found} (found in --output_dir; --overwrite_output_dir True starts afresh)")
    return found


def build_model(model_args: ModelArguments, training_args: FinetuneTrainingArguments):
    """The model to train (LoRA-wrapped with --lora), with the chosen weights trainable."""
    dtype = weight_dtype(training_args)
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
        targets = [t.strip() for t in (model_args.lora_target_modules or DEFAULT_LORA_TARGETS).split(",") if t.strip()]
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
    model_args, data_args, training_args = parse_arguments(argv, DataArguments)
    if data_args.meta_path is None:
        raise SystemExit("error: --meta_path is required")
    run(model_args, data_args, training_args, data_args.meta_path)


def parse_arguments(argv, data_arguments: type) -> tuple:
    """(model, data, training) arguments of a list, sys.argv, or one JSON file."""
    parser = PdArgumentParser((ModelArguments, data_arguments, FinetuneTrainingArguments))
    if argv is None and len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        return parser.parse_json_file(os.path.abspath(sys.argv[1]))
    return parser.parse_args_into_dataclasses(args=argv)


def run(model_args: ModelArguments, data_args: DataArguments, training_args: FinetuneTrainingArguments,
        data_source, **dataset_options) -> None:
    """Train on ``data_source`` (a meta file or :class:`DatasetSpec` list); ``dataset_options``
    go to :class:`SFTDataset`."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(levelname)8s] %(name)s - %(message)s")
    warn_no_effect(model_args, data_args, training_args)
    if not training_args.do_train:  # PaddleMIX trains only under --do_train (there is no evaluation set)
        logger.warning("--do_train not given: nothing to do (PaddleMIX's rule); add --do_train to train")
        return
    # Fixed parameter and optimizer-state names whatever ran before in this process, so that
    # the optimizer states saved in a checkpoint (keyed by those names) are found on resume.
    with unique_name.guard():
        _train(model_args, data_args, training_args, data_source, **dataset_options)


def _train(model_args, data_args, training_args, data_source, **dataset_options) -> None:
    resume = last_checkpoint(training_args)
    if not has_gpu():
        paddle.set_device("cpu")
    model_args.model_name_or_path = resolve_model_or_demo(model_args.model_name_or_path)
    set_seed(training_args.seed)

    model = build_model(model_args, training_args)
    processor = Qwen2_5_VLProcessor.from_pretrained(model_args.model_name_or_path)
    config = model.model.config if model_args.lora else model.config
    dataset = SFTDataset(
        data_source,
        processor,
        config,
        max_seq_length=data_args.max_seq_length,
        image_resolution=model_args.image_resolution,
        strict=data_args.strict,
        seed=training_args.seed,
        video_resolution=model_args.video_resolution,
        video_fps=model_args.video_fps,
        video_maxlen=model_args.video_maxlen,
        resample=data_args.use_data_resampling,
        **dataset_options,
    )
    logger.info(f"{len(dataset)} training samples from {len(dataset.specs)} dataset(s): "
                f"{', '.join(spec.name for spec in dataset.specs)}")
    trainer = Qwen2_5_VLTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=SFTCollator(processor.tokenizer.pad_token_id, flatten=bool(data_args.data_flatten)),
        processor=processor,
        callbacks=[DataSummaryCallback(dataset)],
    )
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()  # the final model: weights, config, tokenizer and processor files
    metrics = {**result.metrics, "train_samples": len(dataset)}
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()


if __name__ == "__main__":
    main()
