"""examples/qwen2_5_vl_finetune.py run in this process, with the losses it logs caught."""

from typing import Dict

from paddlemix_qwen25vl.training.trainer import Qwen2_5_VLTrainer

from .scripts import import_script


def run_finetune(model_path: str, meta_path: str, output_dir: str, *extra: str) -> Dict[int, float]:
    """Run the fine-tuning script in this process; returns the logged losses by step."""
    losses = {}
    original = Qwen2_5_VLTrainer.log

    def log(trainer, logs, **kwargs):  # paddlenlp keeps no log history: catch the losses here
        if "loss" in logs:
            losses[trainer.state.global_step] = logs["loss"]
        return original(trainer, logs, **kwargs)

    Qwen2_5_VLTrainer.log = log
    try:
        import_script("examples/qwen2_5_vl_finetune.py").main([
            "--do_train", "--model_name_or_path", model_path, "--meta_path", meta_path, "--output_dir", output_dir,
            "--per_device_train_batch_size", "3", "--learning_rate", "2e-2", "--logging_steps", "1",
            "--report_to", "none", "--seed", "7", "--image_resolution", "112", "--save_steps", "1000", *extra,
        ])
    finally:
        Qwen2_5_VLTrainer.log = original
    return losses
