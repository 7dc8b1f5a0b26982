"""SSOTrainer sharded across 2 CPU processes with the shipped accelerate configs, overridden only where CPU requires
it (2 processes, fp32, `use_cpu` for FSDP):
- FSDP2, through `tests/fsdp_on_cpu.py`, which lifts accelerate's exclusion of CPU process groups from FSDP;
- DeepSpeed ZeRO-2 and ZeRO-3, on DeepSpeed's CPU accelerator.
The losses of the first steps equal a single process on the same global batch; the checkpoints are the engine's own
and resume; the final model loads in one process with the single process's logits."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import argv, free_port, run_processes
from numerics import assert_close_to_scale

from trl_sso.cli.main import main


pytestmark = pytest.mark.slow  # end-to-end: outside the fast subset (`-m "not slow"`)


ROOT = Path(__file__).resolve().parents[1]
STEPS = "--max_steps 2 --save_steps 1 --logging_steps 1"
# The final models' logits, to 1e-4 of their largest entry (tests/numerics.py): the sharded runs sum gradients across
# processes in another order, and three Adam steps carry that rounding into the weights.
LOGITS_RTOL = 1e-4


def cpu_config(folder: Path, name: str, **overrides) -> str:
    """The shipped accelerate config `name` with 2 processes, fp32 and `overrides`: what a CPU needs, nothing else."""
    config = yaml.safe_load((ROOT / "recipes" / "accelerate_configs" / name).read_text())
    config.update(num_processes=2, mixed_precision="no", **overrides)
    path = folder / f"cpu_{name}"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="module")
def fsdp_config(tmp_path_factory):
    config = cpu_config(tmp_path_factory.mktemp("fsdp"), "fsdp2.yaml", use_cpu=True)
    assert yaml.safe_load(open(config))["fsdp_config"]["fsdp_version"] == 2
    return config


def sharded(config, arguments: list[str], program=(str(ROOT / "tests" / "fsdp_on_cpu.py"),)):
    command = ["accelerate", "launch", "--config_file", config, "--main_process_port", str(free_port())]
    return run_processes([*command, *program, *arguments])


def losses(folder) -> list[float]:
    history = json.loads((Path(folder) / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


CASES = {
    "policy": "",  # the main pair plus the weighted steering pairs; the reference is a second model
    "generator-precomputed-reference": "--sso_objective generator --precompute_ref_log_probs true",
    "lora": "--use_peft --lora_r 4 --lora_target_modules q_proj v_proj",  # the adapter-disabled reference
}


@pytest.mark.parametrize("case", list(CASES))
def test_fsdp2_matches_one_process(case, fsdp_config, tiny_model_dir, data_folder, tmp_path):  # noqa: F811
    """The first two steps of each set-up: the same losses as one process; FSDP checkpoints. The policy run then
    resumes from its FSDP checkpoint for a third step, and its final model loads in one process with the logits of
    the single process's third step (a constant learning rate keeps the schedule independent of `max_steps`)."""
    from transformers import AutoModelForCausalLM

    extra = f"{STEPS} --lr_scheduler_type constant {CASES[case]}"
    one = argv("train", tiny_model_dir, data_folder, tmp_path / "one", extra)  # 1 process x 2 examples
    assert main(one) == 0
    out = tmp_path / "fsdp"
    two = argv("train", tiny_model_dir, data_folder, out, extra)[1:]  # 2 processes x 1 example
    two[two.index("--per_device_train_batch_size") + 1] = "1"
    sharded(fsdp_config, ["train", *two])
    assert losses(out) == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
    checkpoint = out / "checkpoint-2"
    assert (checkpoint / "pytorch_model_fsdp.bin").is_file() or (checkpoint / "adapter_model.safetensors").is_file()
    if case != "policy":
        return
    for argument_list in (one, two):
        argument_list[argument_list.index("--max_steps") + 1] = "3"
    result = sharded(fsdp_config, ["train", *two])
    assert "Resuming from" in result.stdout and "checkpoint-2" in result.stdout
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3
    assert main(one) == 0  # one process resumes too, for its third step
    sharded_model, single_model = (AutoModelForCausalLM.from_pretrained(p) for p in (out, tmp_path / "one"))
    ids = torch.tensor([[1, 17, 250, 3000, 42]])
    with torch.no_grad():
        assert_close_to_scale(sharded_model(ids).logits, single_model(ids).logits, LOGITS_RTOL, name="logits")


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_matches_one_process(stage, tiny_model_dir, data_folder, tmp_path):  # noqa: F811
    """ZeRO-2 and ZeRO-3 on DeepSpeed's CPU accelerator: the losses of one process; a DeepSpeed checkpoint; for
    ZeRO-3 (parameters sharded too) a resume from it and a final model that loads in one process."""
    from transformers import AutoModelForCausalLM

    config = cpu_config(tmp_path, f"deepspeed_zero{stage}.yaml")
    extra = f"{STEPS} --lr_scheduler_type constant"
    one = argv("train", tiny_model_dir, data_folder, tmp_path / "one", extra)
    assert main(one) == 0
    out = tmp_path / "zero"
    two = argv("train", tiny_model_dir, data_folder, out, extra)[1:]
    two[two.index("--per_device_train_batch_size") + 1] = "1"
    program = ("-m", "trl_sso.cli.main")
    sharded(config, ["train", *two], program)
    assert losses(out) == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
    assert (out / "checkpoint-2" / "global_step2").is_dir()  # DeepSpeed's own checkpoint
    if stage == 2:
        return
    for argument_list in (one, two):
        argument_list[argument_list.index("--max_steps") + 1] = "3"
    assert "Resuming from" in sharded(config, ["train", *two], program).stdout
    assert main(one) == 0
    sharded_model, single_model = (AutoModelForCausalLM.from_pretrained(p) for p in (out, tmp_path / "one"))
    ids = torch.tensor([[1, 17, 250, 3000, 42]])
    with torch.no_grad():
        assert_close_to_scale(sharded_model(ids).logits, single_model(ids).logits, LOGITS_RTOL, name="logits")
