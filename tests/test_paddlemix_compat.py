"""PaddleMIX's command lines, as its README and scripts write them (folder prefix changed, tiny
checkpoint, a few steps), run here with the same recipes, flags, files and outputs."""

import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import paddle
import pytest
from safetensors.numpy import save_file

from paddlemix_qwen25vl import Qwen2_5_VLForConditionalGeneration
from paddlemix_qwen25vl.training.data import SFTDataset

from helpers.checkpoints import tiny_config
from helpers.data import qa_records, save_image, write_dataset
from helpers.paths import REPO
from helpers.scripts import import_script

qwen2_5_vl_finetune = import_script("examples/qwen2_5_vl_finetune.py")

LORA_TARGETS = ("model.layers.*q_proj.*,model.layers.*k_proj.*,model.layers.*v_proj.*,model.layers.*gate_proj.*,"
                "model.layers.*up_proj.*,model.layers.*down_proj.*,model.layers.*o_proj.*")
# The flags every PaddleMIX Qwen2.5-VL recipe passes (paddlemix/examples/qwen2_5_vl/shell/*.sh).
COMMON = {
    "--do_train": None, "--overwrite_output_dir": "True", "--dataloader_num_workers": "8", "--bf16": "True",
    "--fp16": "False", "--fp16_opt_level": "O2", "--num_train_epochs": "1", "--freeze_vit": "True",
    "--max_seq_length": "8192", "--recompute": "False", "--max_grad_norm": "1.0", "--evaluation_strategy": "no",
    "--save_strategy": "steps", "--save_steps": "1000", "--save_total_limit": "1", "--learning_rate": "1e-8",
    "--warmup_ratio": "0.1", "--warmup_steps": "100", "--weight_decay": "0.1", "--optim": "adamw",
    "--lr_scheduler_type": "cosine", "--logging_steps": "1", "--report_to": "visualdl",
    "--tensor_parallel_degree": "1", "--pipeline_parallel_degree": "1", "--sep_parallel_degree": "1",
    "--amp_master_grad": "1", "--hybrid_parallel_topo_order": "sharding_first",
    "--meta_path": "configs/baseline_6data_330k.json",
}
# What differs per recipe, as in PaddleMIX; (GPUS, BATCH_SIZE, PER_DEVICE_BATCH_SIZE) give the accumulation.
RECIPES = {
    "baseline_3b_bs32_1e8": ((8, 32, 2), {"--model_name_or_path": "Qwen/Qwen2.5-VL-3B-Instruct",
                             "--output_dir": "work_dirs/baseline_330k_3b_bs32_1e8", "--image_resolution": "768",
                             "--sharding": "stage2"}),
    "baseline_3b_lora_bs32_1e8": ((8, 32, 1), {"--model_name_or_path": "Qwen/Qwen2.5-VL-3B-Instruct",
                                  "--output_dir": "work_dirs/baseline_330k_3b_bs32_1e8", "--image_resolution": "512",
                                  "--sharding": "stage1", "--lora": "True", "--lora_rank": "12", "--lora_alpha": "256",
                                  "--lora_dropout": "0.0", "--lora_target_modules": LORA_TARGETS}),
    "baseline_3b_lora_bs32_1e8_1mp": ((1, 4, 2), {"--model_name_or_path": "Qwen/Qwen2.5-VL-3B-Instruct",
                                      "--output_dir": "work_dirs/baseline_330k_3b_bs32_1e8_1mp", "--image_resolution": "768",
                                      "--sharding": "stage1", "--lora": "True", "--lora_rank": "8", "--lora_alpha": "32",
                                      "--lora_dropout": "0.0", "--lora_target_modules": LORA_TARGETS}),
    "baseline_7b_bs32_1e8": ((8, 32, 2), {"--model_name_or_path": "Qwen/Qwen2.5-VL-7B-Instruct",
                             "--output_dir": "work_dirs/baseline_330k_7b_bs32_1e8", "--image_resolution": "768",
                             "--sharding": "stage2"}),
    "baseline_7b_lora_bs32_1e8": ((8, 32, 2), {"--model_name_or_path": "Qwen/Qwen2.5-VL-7B-Instruct",
                                  "--output_dir": "work_dirs/baseline_330k_7b_bs32_1e8", "--image_resolution": "768",
                                  "--sharding": "stage2", "--lora": "True", "--lora_rank": "8", "--lora_alpha": "32",
                                  "--lora_dropout": "0.0", "--lora_target_modules": LORA_TARGETS}),
}


def shell(name, *args, env=None, shell_name="sh", timeout=600):
    return subprocess.run([shell_name, os.path.join(REPO, "shell", f"{name}.sh"), *args], env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def dry_run_flags(name, shell_name="sh", **env):
    run = shell(name, env={"DRY_RUN": "1", "DEVICE": "cpu", **env}, shell_name=shell_name)
    assert run.returncode == 0, run.stderr
    flags, key = {}, None
    for word in run.stdout.splitlines():
        if word.startswith("--"):
            key, _, value = word.partition("=")
            flags[key] = value or None
        else:
            flags[key] = word
    return flags, run.stderr


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_equals_paddlemix_flag_for_flag(name):
    (gpus, batch, per_device), own = RECIPES[name]
    flags, notices = dry_run_flags(name)
    # The CPU form: one process, so the accumulation keeps the global batch and sharding spans 1 device.
    expected = {**COMMON, **own, "--logging_dir": own["--output_dir"] + "/logs",
                "--per_device_train_batch_size": str(per_device), "--gradient_accumulation_steps": str(batch // per_device),
                "--sharding_parallel_degree": "1"}
    assert flags == expected
    assert "NOTICE: no GPU found: training on CPU" in notices
    assert ("instead of paddle.distributed.launch over GPUS=8" in notices) == (gpus > 1)
    # PaddleMIX's environment overrides, and ours, still apply.
    flags, _ = dry_run_flags(name, BATCH_SIZE="8", PER_DEVICE_BATCH_SIZE="4", MODEL="m", OUTPUT_DIR="o", LR="1e-5")
    assert (flags["--gradient_accumulation_steps"], flags["--per_device_train_batch_size"]) == ("2", "4")
    assert (flags["--model_name_or_path"], flags["--output_dir"], flags["--learning_rate"]) == ("m", "o", "1e-5")


@pytest.mark.parametrize("script", sorted(glob.glob(os.path.join(REPO, "shell", "*.sh"))))
def test_every_shell_script_is_the_same_under_dash_and_bash(script):
    for shell_name in ("sh", "bash"):
        subprocess.run([shell_name, "-n", script], check=True)
    assert open(script).readline().strip() in ("#!/bin/sh", "") and "BASH_SOURCE" not in open(script).read()
    name = os.path.basename(script)[:-3]
    if name.startswith("baseline_") and name != "baseline_common":
        assert dry_run_flags(name, "sh") == dry_run_flags(name, "bash")


@pytest.fixture(scope="module")
def recipe_runs(tiny_checkpoint, tmp_path_factory):
    """PaddleMIX's LoRA and full recipes, launched with sh as its README does, two steps each."""
    root = str(tmp_path_factory.mktemp("recipes"))
    meta = write_dataset(root, qa_records(root, count=8))
    runs = {}
    for name in ("baseline_3b_lora_bs32_1e8", "baseline_3b_bs32_1e8"):
        out = os.path.join(root, name)
        env = {"MODEL": tiny_checkpoint, "META_PATH": meta, "OUTPUT_DIR": out, "BATCH_SIZE": "4", "PER_DEVICE_BATCH_SIZE": "2"}
        runs[name] = (out, shell(name, "--max_steps", "2", "--image_resolution", "112", env=env))
    return runs


@pytest.mark.parametrize("name", ["baseline_3b_lora_bs32_1e8", "baseline_3b_bs32_1e8"])
def test_recipe_trains_on_cpu_and_logs_to_visualdl(recipe_runs, tiny_checkpoint, name):
    from visualdl import LogReader

    out, run = recipe_runs[name]
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert "NOTICE: no GPU found" in run.stderr and "--sharding" in run.stdout and "training in float32" in run.stdout
    log = open(os.path.join(out, "training_log.txt")).read()  # the recipe tees the training's output, as PaddleMIX's
    assert "global_step: 2" in log
    records, = glob.glob(os.path.join(out, "logs", "vdlrecords.*.log"))  # --logging_dir $OUTPUT_DIR/logs
    losses = LogReader(file_path=records).get_data("scalar", "train/loss")
    assert [r.id for r in losses] == [1, 2] and all(np.isfinite(r.value) for r in losses)
    if "lora" in name:
        assert json.load(open(os.path.join(out, "lora_config.json")))["r"] == 12
    else:  # the final model loads; ViT and merger were frozen (PaddleMIX's --freeze_vit True), the LLM trained
        trained = Qwen2_5_VLForConditionalGeneration.from_pretrained(out).state_dict()
        base = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoint).state_dict()
        for key in (k for k in base if k.startswith("visual.")):
            np.testing.assert_array_equal(trained[key].numpy(), base[key].numpy(), err_msg=key)
        vision = sum(int(np.prod(v.shape)) for k, v in base.items() if k.startswith("visual."))
        total = sum(int(np.prod(v.shape)) for v in base.values())
        assert f"trainable parameters: {total - vision:,} of {total:,}" in run.stdout


def test_recipe_failure_is_the_exit_status(tmp_path):
    run = shell("baseline_3b_lora_bs32_1e8_1mp", env={"META_PATH": str(tmp_path / "missing.json"), "OUTPUT_DIR": str(tmp_path / "o"),
                                                      "MODEL": str(tmp_path)})
    assert run.returncode != 0


def small_dataset(tmp_path):
    root = str(tmp_path / "d")
    os.makedirs(root)
    return write_dataset(root, qa_records(root, count=4))


@pytest.mark.parametrize("report_to,written", [(None, True), ("visualdl", True), ("none", False)])
def test_reporting(tiny_checkpoint, tmp_path, report_to, written):
    """The Trainer's default reporting (VisualDL, installed), --report_to visualdl and none."""
    meta = small_dataset(tmp_path)
    logs = tmp_path / "logs"
    args = ["--do_train", "--model_name_or_path", tiny_checkpoint, "--meta_path", meta, "--output_dir", str(tmp_path / "o"),
            "--logging_dir", str(logs), "--max_steps", "2", "--logging_steps", "1", "--image_resolution", "112",
            "--per_device_train_batch_size", "2", "--learning_rate", "1e-3"]
    qwen2_5_vl_finetune.main(args + (["--report_to", report_to] if report_to else []))
    files = glob.glob(str(logs / "vdlrecords.*.log"))
    assert bool(files) == written
    if written:
        from visualdl import LogReader

        reader = LogReader(file_path=files[0])
        assert [r.id for r in reader.get_data("scalar", "train/loss")] == [1, 2]
        assert "hparam" in str(reader.get_tags())  # the hyper-parameters record that used to crash


def test_paddlemix_finetune_flags_are_accepted(tiny_checkpoint, tmp_path, caplog):
    meta = small_dataset(tmp_path)
    flags = ["--video_resolution", "128", "--video_fps", "1.0", "--video_maxlen", "4", "--max_image_size", "448",
             "--conv_style", "qwen2_5_vl", "--use_data_resampling", "True", "--normalize_type", "imagenet",
             "--pad2square", "False", "--drop_path_rate", "0.1", "--cache_dir", str(tmp_path), "--use_cache", "True",
             "--resize_vocab", "False", "--split_special_tokens", "False", "--new_special_tokens", "<x>",
             "--freeze_llm", "False", "--group_by_length", "True", "--save_safetensors", "True", "--benchmark", "False",
             "--lora", "True", "--lora_target_modules", LORA_TARGETS]
    qwen2_5_vl_finetune.main(["--do_train", "--model_name_or_path", tiny_checkpoint, "--meta_path", meta,
                              "--output_dir", str(tmp_path / "o"), "--max_steps", "1", "--report_to", "none",
                              "--image_resolution", "112", "--per_device_train_batch_size", "2", *flags])
    warned = caplog.text
    for flag in ("--drop_path_rate", "--cache_dir", "--new_special_tokens", "--max_image_size"):
        assert f"{flag} " in warned and "has no effect" in warned
    assert json.load(open(tmp_path / "o" / "lora_config.json"))["r"] == 128  # PaddleMIX's LoRA defaults
    with pytest.raises(ValueError, match="--conv_style 'llava'"):
        qwen2_5_vl_finetune.main(["--meta_path", meta, "--output_dir", str(tmp_path / "p"), "--conv_style", "llava"])


def test_output_dir_resume_rules(tiny_checkpoint, tmp_path):
    """As in PaddleMIX: a non-empty --output_dir needs --overwrite_output_dir; a checkpoint in it is resumed."""
    meta = small_dataset(tmp_path)
    out = tmp_path / "o"
    out.mkdir()
    (out / "stray.txt").write_text("x")
    base = ["--do_train", "--model_name_or_path", tiny_checkpoint, "--meta_path", meta, "--output_dir", str(out),
            "--report_to", "none", "--image_resolution", "112", "--per_device_train_batch_size", "2"]
    with pytest.raises(ValueError, match="already exists and is not empty"):
        qwen2_5_vl_finetune.main(base + ["--max_steps", "1"])
    qwen2_5_vl_finetune.main(base + ["--max_steps", "1", "--save_steps", "1", "--overwrite_output_dir", "True"])
    assert (out / "checkpoint-1").is_dir()
    qwen2_5_vl_finetune.main(base + ["--max_steps", "2", "--save_steps", "1"])  # picks up checkpoint-1
    assert json.load(open(out / "trainer_state.json"))["global_step"] == 2


def test_paddlemix_data_layout(processor, tmp_path, monkeypatch):
    """PaddleMIX's meta file: paths from the working directory, images without an <image> tag."""
    monkeypatch.chdir(tmp_path)
    os.makedirs("playground/opensource_json")
    os.makedirs("playground/data/chartqa")
    save_image("playground/data/chartqa/a.png")
    records = [{"messages": [{"role": "user", "content": "What colour?"}, {"role": "assistant", "content": "red"}],
                "images": ["playground/data/chartqa/a.png"]}]
    json.dump(records, open("playground/opensource_json/chartqa_train_500.json", "w"))
    shutil.copy(os.path.join(REPO, "configs", "demo_chartqa_500.json"), "meta.json")
    sample = SFTDataset("meta.json", processor, tiny_config(), max_seq_length=4096, strict=True)[0]
    ids = sample["input_ids"].tolist()
    vision_start = ids.index(151652)
    assert ids[vision_start - 3:vision_start] == [151644, 872, 198]  # "<|im_start|>user\n" then the image
    assert sample["image_grid_thw"].tolist() == [[1, 6, 4]]


def test_without_do_train_nothing_is_trained(tmp_path, caplog):
    """PaddleMIX trains only under --do_train: without it, nothing is loaded, trained or written."""
    out = tmp_path / "o"
    qwen2_5_vl_finetune.main(["--meta_path", str(tmp_path / "unused.json"), "--output_dir", str(out), "--report_to", "none"])
    assert "--do_train not given: nothing to do" in caplog.text and not out.exists()


# ------------------------------------------------------------------ the "official" pipeline (--dataset_use)
# PaddleMIX's shell/baseline_3b_bs32_1e8_official.sh, flag for flag: the common flags but no --warmup_steps and
# these (its fixed GRADIENT_ACC=4 with GPUS=2 x PER_DEVICE_BATCH_SIZE=4: a global batch of 32, kept on one CPU
# process by accumulation 8).
OFFICIAL = {
    **{flag: value for flag, value in COMMON.items() if flag != "--warmup_steps"},
    "--model_name_or_path": "Qwen/Qwen2.5-VL-3B-Instruct", "--output_dir": "work_dirs/baseline_330k_3b_bs4_official",
    "--logging_dir": "work_dirs/baseline_330k_3b_bs4_official/logs", "--num_train_epochs": "0.5",
    "--per_device_train_batch_size": "4", "--gradient_accumulation_steps": "8",
    "--dataset_use": "dvqa_train_200k,chartqa_train_18k,ai2d_train_12k,docvqa_train_10k,geoqa,synthdog_en",
    "--max_pixels": "50176", "--min_pixels": "784", "--data_flatten": "True", "--learning_rate": "1e-4",
    "--warmup_ratio": "0.03", "--weight_decay": "0", "--sharding_parallel_degree": "1", "--sharding": "stage2",
}


def test_official_recipe_equals_paddlemix_flag_for_flag():
    flags, notices = dry_run_flags("baseline_3b_bs32_1e8_official")
    assert flags == OFFICIAL
    assert "instead of paddle.distributed.launch over GPUS=2" in notices and "global batch stays 32" in notices
    # PaddleMIX's overrides: the global batch follows GPUS x PER_DEVICE_BATCH_SIZE x 4, as its fixed accumulation does.
    flags, _ = dry_run_flags("baseline_3b_bs32_1e8_official", GPUS="4", PER_DEVICE_BATCH_SIZE="2", sharding_parallel_degree="2")
    assert (flags["--gradient_accumulation_steps"], flags["--sharding_parallel_degree"]) == ("16", "2")


def official_datasets(root, media_prefix="", names=("chartqa_train_18k", "ai2d_train_12k")):
    """PaddleMIX's layout under ``root``: playground/opensource_json/<name>.json, images in
    playground/data/<name>/ named from the working directory (or under ``media_prefix``); 8 image
    records and a text-only one each."""
    for name in names:
        images = os.path.join(root, "playground", "data", name)
        os.makedirs(images)
        records = qa_records(images, count=8)
        for record in records[:-1]:  # the last one is text-only
            record["images"] = [os.path.join(media_prefix, "playground", "data", name, path) for path in record["images"]]
        write_dataset(os.path.join(root, "playground", "opensource_json"), records, name=name, jsonl=False)
    return os.path.join(root, "playground", "opensource_json")


def test_dataset_use_registry_and_sampling(processor, tmp_path, monkeypatch):
    """--dataset_use as PaddleMIX resolves it: registered names, name%N a random N% (int(n * N / 100)), %>=100 all."""
    from paddlemix_qwen25vl.training.data import build_index
    from paddlemix_qwen25vl.training.registry import dataset_specs

    monkeypatch.chdir(tmp_path)
    official_datasets(str(tmp_path))
    half, whole = dataset_specs("chartqa_train_18k%50,ai2d_train_12k")
    assert (half.name, half.sampling_rate, whole.sampling_rate) == ("chartqa_train_18k", 0.5, 1.0)
    assert half.annotation == str(tmp_path / "playground" / "opensource_json" / "chartqa_train_18k.json")
    index = build_index([half, whole], seed=3)
    chosen = [r for d, r in index if d == 0]
    assert len(chosen) == 4 and len(set(chosen)) == 4 and [r for d, r in index if d == 1] == list(range(9))
    assert build_index([half, whole], seed=3) == index and any(build_index([half], seed=s) != build_index([half], seed=3)
                                                               for s in range(4, 8))
    assert len(build_index(dataset_specs("chartqa_train_18k%200"))) == 9
    with pytest.raises(ValueError, match="unknown dataset 'nope': registered are dvqa_train_200k"):
        dataset_specs("chartqa_train_18k,nope")
    with pytest.raises(FileNotFoundError, match="geoqa.*playground/opensource_json/geoqa\\+.json"):
        dataset_specs("geoqa")
    # --min_pixels/--max_pixels: the per-image budget of training (PaddleMIX's official image processor settings)
    def grid(**pixels):
        return SFTDataset([whole], processor, tiny_config(), max_seq_length=4096, strict=True, **pixels)[0]["image_grid_thw"]

    assert grid().tolist() == [[1, 6, 4]]  # the 84x56 image, the checkpoint's budget
    assert grid(min_pixels=784, max_pixels=56 * 56).tolist() == [[1, 4, 2]]
    assert grid(min_pixels=4 * 84 * 56).tolist() == [[1, 12, 8]]
    assert processor.image_processor.max_pixels != 56 * 56  # the processor that is saved keeps the checkpoint's


def test_official_recipe_trains_on_cpu(tiny_checkpoint, tmp_path):
    """sh shell/baseline_3b_bs32_1e8_official.sh as PaddleMIX's README runs its recipes (two steps, packed,
    text-only records included: PaddleMIX's official path crashes on them). The recipe runs from the
    repository root, so the datasets are given as annotation files."""
    from visualdl import LogReader

    annotations = official_datasets(str(tmp_path), media_prefix=str(tmp_path))
    out = str(tmp_path / "out")
    use = f"{annotations}/chartqa_train_18k.json%50,{annotations}/ai2d_train_12k.json"
    run = shell("baseline_3b_bs32_1e8_official", "--dataset_use", use, "--max_steps", "2",
                env={"MODEL": tiny_checkpoint, "OUTPUT_DIR": out, "BATCH_SIZE": "4", "PER_DEVICE_BATCH_SIZE": "2",
                     "DEVICE": "cpu"})
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert "NOTICE: no GPU found" in run.stderr and "qwen2_5_vl_finetune_official.py" in run.stderr
    log = open(os.path.join(out, "training_log.txt")).read()
    assert "13 training samples from 2 dataset(s)" in log and "global_step: 2" in log  # 4 of 9 + 9
    assert "data summary: 0 bad record(s) skipped" in log
    assert "--meta_path 'configs/baseline_6data_330k.json' has no effect" in log
    records, = glob.glob(os.path.join(out, "logs", "vdlrecords.*.log"))
    losses = LogReader(file_path=records).get_data("scalar", "train/loss")
    assert [r.id for r in losses] == [1, 2] and all(np.isfinite(r.value) for r in losses)
    from paddlemix_qwen25vl.checkpoint_io import SafetensorsFile

    trained, base = (SafetensorsFile(os.path.join(path, "model.safetensors")) for path in (out, tiny_checkpoint))
    assert not np.array_equal(trained.raw("model.layers.0.mlp.up_proj.weight"), base.raw("model.layers.0.mlp.up_proj.weight"))
    for key in ("visual.merger.mlp.0.weight", "visual.blocks.0.attn.qkv.weight"):  # --freeze_vit True, as in PaddleMIX
        np.testing.assert_array_equal(trained.raw(key), base.raw(key))


# ------------------------------------------------------------------ checkpoints and tools
def paddlenlp_tensor_parallel_save(model, folder, degree, safetensors=False):
    """What PaddleNLP's Trainer writes under --tensor_parallel_degree: per-rank files split as
    its Qwen2 mapping splits them (column-parallel on the last axis, row-parallel and the
    vocabulary on the first), the vision tower and norms whole."""
    column = ("self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj.", "mlp.gate_proj.", "mlp.up_proj.")
    row = ("self_attn.o_proj.weight", "mlp.down_proj.weight")
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    os.makedirs(folder, exist_ok=True)
    for rank in range(degree):
        piece = {}
        for name, array in state.items():
            axis = None
            if name.startswith("model.layers.") and any(c in name for c in column):
                axis = array.ndim - 1
            elif name.startswith("model.layers.") and name.endswith(row) or name == "model.embed_tokens.weight":
                axis = 0
            elif name == "lm_head.weight":
                axis = 1
            piece[name] = np.split(array, degree, axis=axis)[rank].copy() if axis is not None else array
        if safetensors:
            save_file(piece, os.path.join(folder, f"model.tp{rank:02d}.safetensors"), metadata={"format": "np"})
        else:
            paddle.save({k: paddle.to_tensor(v) for k, v in piece.items()}, os.path.join(folder, f"model_state.tp{rank:02d}.pdparams"))
    for name in ("config.json", "generation_config.json"):
        src = os.path.join(model.config._path, name)
        if os.path.exists(src):
            shutil.copy(src, folder)


def states_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for key in sa:
        np.testing.assert_array_equal(sa[key].numpy(), sb[key].numpy(), err_msg=key)


@pytest.mark.parametrize("safetensors", [False, True], ids=["pdparams", "safetensors"])
def test_paddlenlp_tensor_parallel_checkpoint_loads_and_merges(reference_checkpoint, tmp_path, safetensors):
    _, path = reference_checkpoint
    full = Qwen2_5_VLForConditionalGeneration.from_pretrained(path)
    full.config._path = path
    folder = str(tmp_path / "tp2")
    paddlenlp_tensor_parallel_save(full, folder, 2, safetensors)
    states_equal(Qwen2_5_VLForConditionalGeneration.from_pretrained(folder), full)  # directly, unmerged
    run = subprocess.run([sys.executable, os.path.join(REPO, "examples", "merge_tensor_parallel_params.py"),
                          "--model_name_or_path", folder, "--tensor_parallel_degree", "2"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "no GPU found" in run.stderr  # PaddleMIX's --device gpu default, on CPU
    assert os.path.exists(os.path.join(folder, "model_state.pdparams"))
    states_equal(Qwen2_5_VLForConditionalGeneration.from_pretrained(folder), full)  # now from the merged file
    wrong = subprocess.run([sys.executable, os.path.join(REPO, "examples", "merge_tensor_parallel_params.py"),
                            "--model_name_or_path", folder, "--tensor_parallel_degree", "4"], capture_output=True, text=True)
    assert wrong.returncode != 0 and "holds 2 rank(s)" in wrong.stderr
    os.remove(os.path.join(folder, "model_state.tp01.pdparams" if not safetensors else "model.tp01.safetensors"))
    os.remove(os.path.join(folder, "model_state.pdparams"))
    with pytest.raises(Exception, match="missing keys|mis-shaped|rank"):
        Qwen2_5_VLForConditionalGeneration.from_pretrained(folder)


def test_from_pretrained_keywords(tiny_checkpoint):
    with pytest.raises(TypeError, match="unknown keyword argument\\(s\\) from_hf_hub, nonsense"):
        Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoint, nonsense=1, from_hf_hub=True)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoint, tensor_parallel_degree=1, dtype="float32",
                                                               tensor_parallel_output=False, use_cache=False)
    assert model.mp.world_size == 1 and model.config.use_cache is False
    assert model.model.embed_tokens.weight.dtype == paddle.float32
    with pytest.raises(ValueError, match="needs 2 processes|tensor_parallel_degree=2|mp_degree=2"):
        Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoint, tensor_parallel_degree=2)
    with pytest.raises(ValueError, match="tensor_parallel_output=True"):
        Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoint, tensor_parallel_output=True)
    with pytest.raises(ValueError, match="tensor_parallel_rank=1"):
        Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoint, tensor_parallel_rank=1)


def test_merge_lora_paddlemix_command(recipe_runs, tiny_checkpoint):
    """PaddleMIX's merge command line: no --merge_model_path (the merge goes into --lora_path), --device gpu default."""
    lora_dir, run = recipe_runs["baseline_3b_lora_bs32_1e8"]
    assert run.returncode == 0
    merged = subprocess.run([sys.executable, os.path.join(REPO, "examples", "merge_lora_params.py"),
                             "--model_name_or_path", tiny_checkpoint, "--lora_path", lora_dir],
                            capture_output=True, text=True, timeout=300)
    assert merged.returncode == 0, merged.stderr[-2000:]
    assert "no GPU found" in merged.stderr
    assert Qwen2_5_VLForConditionalGeneration.from_pretrained(lora_dir).mp.world_size == 1


def test_torch2paddle_paddlemix_flags(reference_checkpoint, tmp_path):
    _, path = reference_checkpoint
    script = os.path.join(REPO, "examples", "torch2paddle_weight_tran.py")
    dest = tmp_path / "converted"
    subprocess.run([sys.executable, script, "--src_dir", path, "--dest_dir", str(dest)], check=True, capture_output=True)
    config = json.load(open(dest / "config.json"))
    assert "dtype" in config and "torch_dtype" not in config and "transformers_version" not in config
    Qwen2_5_VLForConditionalGeneration.from_pretrained(str(dest))
    kept = tmp_path / "kept"
    subprocess.run([sys.executable, script, "--src_dir", path, "--dest_dir", str(kept), "--skip_config_update",
                    "--src_prefix", "model.", "--dst_prefix", "language_model."], check=True, capture_output=True)
    assert "torch_dtype" in json.load(open(kept / "config.json"))
    from paddlemix_qwen25vl.checkpoint_io import SafetensorsFile

    keys = SafetensorsFile(str(kept / "model.safetensors")).keys()
    assert any(k.startswith("language_model.layers.") for k in keys) and not any(k.startswith("model.") for k in keys)


def test_inference_scripts_paddlemix_flags(demo_env):
    def run(script, *args):
        result = subprocess.run([sys.executable, os.path.join(REPO, "examples", script), *args], env=demo_env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    assert "output_text:" in run("video_infer.py", "--fp16", "--max_new_tokens", "4")
    out = run("single_image_infer.py", "--benchmark", "--max_new_tokens", "3")
    seconds = [line for line in out.splitlines() if line.startswith("s/it: ")]  # PaddleMIX's line, as users parse it
    assert len(seconds) == 1 and float(seconds[0].split()[-1]) > 0 and "CPU peak_rss:" in out
