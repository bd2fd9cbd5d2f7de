"""Fine-tuning: packed = padded loss, freezing flags, full runs whose loss falls, checkpoints and resume."""

import os

import numpy as np
import paddle
import pytest

from paddlemix_qwen25vl import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
from paddlemix_qwen25vl.training.collator import SFTCollator
from paddlemix_qwen25vl.training.data import SFTDataset
from paddlemix_qwen25vl.training.trainer import Qwen2_5_VLTrainer, set_trainable, trainable_parameter_names
from helpers.checkpoints import tiny_config
from helpers.finetune import run_finetune


def test_packed_loss_equals_padded_loss(tiny_checkpoint, processor, meta_path):
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoint)
    ds = SFTDataset(meta_path, processor, model.config, max_seq_length=4096)
    samples = [ds[i] for i in (0, 8, 3, 5)]  # images and a text-only sample, different lengths
    losses = []
    for flatten in (False, True):
        batch = {k: paddle.to_tensor(v) for k, v in SFTCollator(151643, flatten)(samples).items()}
        assert batch["input_ids"].shape[0] == (1 if flatten else 4)
        with paddle.no_grad():
            losses.append(float(model(**batch, use_cache=False).loss))
            # the trainer's loss (head on supervised rows only) is the model's loss
            assert abs(float(Qwen2_5_VLTrainer.compute_loss(None, model, batch)) - losses[-1]) < 1e-5
    assert abs(losses[0] - losses[1]) < 1e-5


@pytest.mark.parametrize("flags, expected", [
    ({}, {"visual.blocks", "visual.patch_embed", "visual.merger", "model.embed_tokens", "model.layers", "model.norm"}),
    ({"freeze_vit": True}, {"model.embed_tokens", "model.layers", "model.norm"}),
    ({"freeze_vit": True, "tune_mm_mlp": True}, {"visual.merger", "model.embed_tokens", "model.layers", "model.norm"}),
    ({"freeze_llm": True}, {"visual.blocks", "visual.patch_embed", "visual.merger"}),
    ({"freeze_vit": True, "freeze_llm": True, "tune_mm_mlp": True}, {"visual.merger"}),
])
def test_freezing_flags_select_exact_parameter_sets(flags, expected):
    model = Qwen2_5_VLForConditionalGeneration(tiny_config())
    set_trainable(model, flags.get("freeze_vit", False), flags.get("freeze_llm", False), flags.get("tune_mm_mlp", False))
    names = trainable_parameter_names(model)
    groups = {".".join(n.split(".")[:2]) for n in names}
    assert groups == expected
    every_in_group = [n for n, _ in model.named_parameters() if ".".join(n.split(".")[:2]) in expected]
    assert sorted(names) == sorted(every_in_group)


def test_full_run_loss_falls_and_final_model_loads(tiny_checkpoint, meta_path, tmp_path, portable_cpu):
    out = str(tmp_path / "full")
    losses = run_finetune(tiny_checkpoint, meta_path, out, "--max_steps", "8", "--data_flatten")
    assert np.mean([losses[s] for s in (7, 8)]) < np.mean([losses[s] for s in (1, 2)]) - 0.5
    # the final directory is a complete checkpoint for the inference scripts
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(out)
    processor = Qwen2_5_VLProcessor.from_pretrained(out)
    assert processor.tokenizer.pad_token_id == 151643
    assert model.config.hidden_size == tiny_config().hidden_size


@pytest.fixture(scope="module")
def resume_runs(tiny_checkpoint, meta_path, tmp_path_factory):
    """Losses of an uninterrupted 5-step run, of the same run saving every step, and of runs
    resumed from its checkpoints. 9 records in batches of 3 make 3 steps per epoch."""
    root = tmp_path_factory.mktemp("resume")
    whole = run_finetune(tiny_checkpoint, meta_path, str(root / "whole"), "--max_steps", "5")
    out = str(root / "parts")
    first = run_finetune(tiny_checkpoint, meta_path, out, "--max_steps", "5", "--save_steps", "1")

    def resume(step):
        return run_finetune(tiny_checkpoint, meta_path, str(root / f"resumed{step}"), "--max_steps", "5",
                            "--resume_from_checkpoint", os.path.join(out, f"checkpoint-{step}"))
    return whole, first, resume


# checkpoint 2: inside the first epoch (two batches skipped); checkpoint 3: at the epoch boundary,
# where the next epoch's shuffle must be the uninterrupted run's although no batch is replayed
@pytest.mark.parametrize("checkpoint_step", [2, 3])
def test_resume_gives_the_same_losses_as_an_uninterrupted_run(resume_runs, checkpoint_step):
    whole, first, resume = resume_runs
    resumed = resume(checkpoint_step)
    assert sorted(resumed) == list(range(checkpoint_step + 1, 6))  # continues at the step after the checkpoint
    for step in range(1, 6):
        assert abs(first[step] - whole[step]) < 1e-6
    # the same batches and the same updates; the tolerance covers only paddlenlp's float32
    # running sum of logged losses
    for step in resumed:
        assert abs(resumed[step] - whole[step]) < 1e-5, (step, resumed[step], whole[step])
