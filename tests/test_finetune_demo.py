"""The shipped demo model looks at the image: it answers held-out synthetic shape questions."""

import os
import shutil

import pytest

from paddlemix_qwen25vl.demo import SHIPPED_WEIGHTS
from paddlemix_qwen25vl.tools.make_synthetic_dataset import make_dataset
from paddlemix_qwen25vl.training.demo_model import evaluate
from helpers.checkpoints import copy_processor_files


@pytest.mark.skipif(not os.path.isdir(SHIPPED_WEIGHTS), reason="no trained demo weights in examples/assets/demo_weights")
def test_shipped_demo_model_answers_held_out_questions(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in os.listdir(SHIPPED_WEIGHTS):
        shutil.copy2(os.path.join(SHIPPED_WEIGHTS, name), model_dir / name)
    copy_processor_files(model_dir)
    make_dataset(str(tmp_path / "data"), num_samples=0, num_eval=40, seed=1234)  # images never seen in training
    accuracy, results = evaluate(str(model_dir), str(tmp_path / "data" / "eval.jsonl"))
    assert accuracy >= 0.9, results
