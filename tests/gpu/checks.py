"""The GPU checks of trl-sso, run by `tests/gpu/run_checks.sh` (see tests/gpu/README.md).

On a single-GPU machine, with the packaged SmolLM2-135M-Instruct (offline):
1. bf16: SSO training steps in bf16 have the losses of the same steps in fp32, within tolerance;
2. vLLM: the vLLM generation backend writes the same structure as the transformers backend on the same prompts, and
   the throughput of both is printed;
3. FSDP2 on 1 GPU: `trl-sso train` under `accelerate launch` with the shipped `fsdp2.yaml`;
4. QLoRA: `trl-sso train --use_peft --load_in_4bit` with bitsandbytes on the GPU;
5. step time: `tests/benchmarks/bench_step.py` on the GPU (SSO against DPO on the same examples);
6. the recipes' path: `iterate` for 2 rounds with vLLM colocate, LoRA, gradient checkpointing and bf16, with the free
   GPU memory at each training start (the engine's memory handed back);
7. SSO's layouts (tree, one row a pair, two rows) in bf16: the same losses within 1%; step time and
   `max_memory_allocated` of each (the tree with SDPA and with FlexAttention) and of DPOTrainer with flash attention;
   attention by segment and FlexAttention's block mask against the dense mask;
8. vLLM server mode: `trl vllm-serve`, and `generate` against it with the log-probability filter.
It prints one summary table and exits with 1 when a check fails.

`--cpu` is the dry run: the same checks on CPU with a tiny random model where the packaged one would be slow (bf16
emulated; FSDP2 on 2 CPU processes through `tests/fsdp_on_cpu.py`; bitsandbytes' CPU backend); vLLM, which needs a
GPU, is reported as not run rather than failed.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # conftest's tiny model, for the dry run
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class NotRun(Exception):
    """A check that cannot run here (e.g. vLLM in the CPU dry run): reported, not failed."""


def model_path(cpu: bool, work: Path) -> str:
    """The packaged SmolLM2 on a GPU; a tiny random Llama on its vocabulary in the CPU dry run."""
    from trl_sso.offline import default_model_path

    path = default_model_path()
    if not cpu:
        return path
    from conftest import save_tiny_llama
    from transformers import AutoTokenizer

    return save_tiny_llama(AutoTokenizer.from_pretrained(path), work / "tiny-llama")


def training_data(work: Path, count: int = 16) -> str:
    """SSO records built from the packaged prompts with fixed responses, as a JSONL file."""
    from trl_sso.data import make_record
    from trl_sso.generation.prompts import load_prompts

    path = work / "sso.jsonl"
    with path.open("w") as file:
        for index, prompt in enumerate(load_prompts(num_prompts=count)):
            record = make_record(
                prompt,
                f"A careful, complete answer, number {index}.",
                "no.",
                f"An answer, number {index}.",
                "Answer helpfully, completely and accurately.",
                "Answer unhelpfully, briefly and carelessly.",
            )
            file.write(json.dumps(record) + "\n")
    return str(path)


TRAIN = (
    "--max_steps 3 --per_device_train_batch_size 2 --learning_rate 1e-6 --logging_steps 1 --report_to none "
    "--max_length 256 --save_strategy no --gradient_checkpointing false --seed 0"
)


def run(command: list[str], timeout: int = 600, env: dict | None = None) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:6])} ... exited with {result.returncode}: {result.stderr[-1500:]}")
    return result.stdout


def losses(folder: Path) -> list[float]:
    history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def check_bf16(cpu, model, data, work) -> str:
    """bf16 losses within 2% of fp32 on the same steps (with an SFT term, so that the first step's loss depends on
    the log-probabilities, not only on the policy being its own reference)."""
    figures = {}
    for precision in ("fp32", "bf16"):
        out = work / f"train-{precision}"
        flags = ["--bf16", "true" if precision == "bf16" else "false", "--sso_sft_coef", "0.1"]
        flags += ["--use_cpu", "true"] if cpu else []
        command = ["trl-sso", "train", "--model_name_or_path", model, "--dataset_name", data]
        run([*command, "--output_dir", str(out), *TRAIN.split(), *flags])
        figures[precision] = losses(out)
    worst = max(abs(b - f) / abs(f) for b, f in zip(figures["bf16"], figures["fp32"], strict=True))
    detail = f"fp32 {figures['fp32']}, bf16 {figures['bf16']}, worst relative gap {worst:.1e}"
    if worst > 0.02:
        raise AssertionError(detail)
    return detail


def check_vllm(cpu, model, data, work) -> str:
    """vLLM and transformers backends on the same 32 prompts: same columns, records kept by both, throughput."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        if cpu:
            raise NotRun("vLLM is not installed (it needs a GPU)")
        raise AssertionError("vLLM is not installed: pip install trl-sso[vllm]")
    from trl_sso.generation import GenerateArguments, generate

    results = {}
    for backend in ("transformers", "vllm"):
        args = GenerateArguments(
            model_name_or_path=model,
            use_vllm=backend == "vllm",
            num_prompts=32,
            max_completion_length=64,
            batch_size=32,
            seed=0,
            output_dir=str(work / f"gen-{backend}"),
        )
        start = time.perf_counter()
        dataset, summary = generate(args)
        elapsed = time.perf_counter() - start
        results[backend] = (dataset, summary["generated_tokens"] / elapsed)
    (ours, ours_rate), (theirs, theirs_rate) = results["transformers"], results["vllm"]
    if ours.column_names != theirs.column_names or not len(ours) or not len(theirs):
        raise AssertionError(
            f"columns {ours.column_names} vs {theirs.column_names}, records {len(ours)}/{len(theirs)}"
        )
    return (
        f"records transformers {len(ours)} / vLLM {len(theirs)} of 32; tokens/s transformers {ours_rate:.0f}, "
        f"vLLM {theirs_rate:.0f}"
    )


def check_fsdp2(cpu, model, data, work) -> str:
    """`trl-sso train` under `accelerate launch` with the shipped fsdp2.yaml: 1 GPU (2 CPU processes in the dry
    run)."""
    import yaml

    config = yaml.safe_load((ROOT / "recipes" / "accelerate_configs" / "fsdp2.yaml").read_text())
    if cpu:
        config.update(num_processes=2, mixed_precision="no", use_cpu=True)
        program = [str(ROOT / "tests" / "fsdp_on_cpu.py")]
    else:
        config.update(num_processes=1)
        program = ["-m", "trl_sso.cli.main"]
    path = work / "fsdp2.yaml"
    path.write_text(yaml.safe_dump(config))
    out = work / "train-fsdp2"
    from conftest import free_port

    port = str(free_port())
    command = ["accelerate", "launch", "--config_file", str(path), "--main_process_port", port, *program, "train"]
    run([*command, "--model_name_or_path", model, "--dataset_name", data, "--output_dir", str(out), *TRAIN.split()])
    return f"losses {losses(out)}"


def check_qlora(cpu, model, data, work) -> str:
    """QLoRA with bitsandbytes: a 4-bit base, a LoRA adapter saved with its card."""
    out = work / "train-qlora"
    extra = "--use_peft --load_in_4bit --lora_r 8 --lora_target_modules q_proj v_proj"
    command = ["trl-sso", "train", "--model_name_or_path", model, "--dataset_name", data, "--output_dir", str(out)]
    run([*command, *TRAIN.split(), *extra.split()])
    card = (out / "README.md").read_text()
    if not (out / "adapter_config.json").is_file() or "load_in_4bit=True" not in card:
        raise AssertionError("no adapter, or the card does not record the 4-bit base")
    return f"losses {losses(out)}"


def check_step_time(cpu, model, data, work) -> str:
    """The step-time benchmark: SSO against DPO on the same examples."""
    size = "--hidden 128 --layers 2 --repeats 1" if cpu else "--hidden 1024 --layers 16 --batch 4 --repeats 5"
    device = "--device cpu" if cpu else "--device cuda"
    output = run([sys.executable, "tests/benchmarks/bench_step.py", *size.split(), *device.split()], timeout=900)
    print(output)
    return "; ".join(line.strip() for line in output.splitlines() if "/ DPO on its pairs" in line)


def check_recipe_path(cpu, model, data, work) -> str:
    """The recipes' path at small scale: `iterate` for 2 rounds with vLLM colocate, LoRA, gradient checkpointing and
    bf16 on the packaged model. The free GPU memory at each round's training start shows the engine's memory handed
    back (it reserves `vllm_gpu_memory_utilization` of the GPU while it generates)."""
    if cpu:
        raise NotRun("vLLM needs a GPU (the colocate lifecycle is tested on CPU with a stand-in engine)")
    import torch
    from transformers import TrainerCallback

    from trl_sso.cli.commands import parser
    from trl_sso.scripts.iterate import iterate

    free_at_train = []

    class FreeMemory(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            free_at_train.append(torch.cuda.mem_get_info()[0] / 2**30)

    argv = (
        f"--model_name_or_path {model} --output_dir {work / 'recipe'} --rounds 2 --num_prompts 16 --batch_size 16 "
        "--max_completion_length 64 --use_vllm --vllm_gpu_memory_utilization 0.5 --use_peft --lora_r 8 "
        "--gradient_checkpointing true --bf16 true --max_steps 4 --per_device_train_batch_size 4 --report_to none "
        "--save_strategy no --max_length 512 --no_round_signal --drop_revealing false"
    ).split()
    pipe_args, gen_options, training_args, model_args = parser("iterate").parse_args_and_config(argv)[:4]
    reports = iterate(pipe_args, gen_options, training_args, model_args, callbacks=[FreeMemory()])
    total = torch.cuda.mem_get_info()[1] / 2**30
    if len(reports) != 2 or min(free_at_train) < 0.5 * total:
        raise AssertionError(f"reports {len(reports)}, free GiB at training start {free_at_train} of {total:.0f}")
    records = [report["num_records"] for report in reports]
    free = ", ".join(f"{value:.0f}" for value in free_at_train)
    return f"records per round {records}; free GPU memory at each training start {free} GiB of {total:.0f}"


def check_layouts(cpu, model, data, work) -> str:
    """SSO's layouts on the same steps, with the principle after the question: the tree (one row a record, with SDPA
    and on a GPU with FlexAttention's block mask too), one shared row a pair and DPO's two rows a pair give the same
    losses (bf16 on a GPU: within 1%); the fastest step after the first (which compiles FlexAttention) and the
    `max_memory_allocated` of each, and of TRL's DPOTrainer on the plain pairs of the same records with flash
    attention where it is installed (SDPA otherwise); then one attention layer by segment against SDPA's dense mask
    and FlexAttention's block mask on the device (`tests/benchmarks/bench_segments.py`)."""
    import importlib.util

    import torch
    from datasets import load_dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.seconds = []

        def on_step_begin(self, args, state, control, **kwargs):
            if not cpu:
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if not cpu:
                torch.cuda.synchronize()
            self.seconds.append(time.perf_counter() - self.start)

    from trl_sso import SSOConfig, SSOTrainer

    tokenizer = AutoTokenizer.from_pretrained(model)
    dataset = load_dataset("json", data_files=data, split="train")
    common = dict(
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=1e-6,
        bf16=not cpu,
        use_cpu=cpu,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        max_length=512,
        seed=0,
    )
    layouts = {
        "tree": {},
        "one row a pair": {"sso_share_across_pairs": False},
        "two rows a pair": {"sso_share_prompt": False},
    }
    if not cpu:  # FlexAttention has no backward on a CPU (SSOTrainer refuses it there)
        layouts["tree, FlexAttention"] = {"model_init_kwargs": {"attn_implementation": "flex_attention"}}
    flash = not cpu and importlib.util.find_spec("flash_attn") is not None
    dpo_attention = "flash_attention_2" if flash else "sdpa"
    figures = {}
    for name, layout in [*layouts.items(), (f"DPOTrainer ({dpo_attention})", None)]:
        folder = str(work / f"layout-{len(figures)}")
        if layout is None:
            args = DPOConfig(output_dir=folder, model_init_kwargs={"attn_implementation": dpo_attention}, **common)
            trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        else:
            args = SSOConfig(output_dir=folder, sso_principle_placement="after_question", **layout, **common)
            trainer = SSOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        if not cpu:
            torch.cuda.reset_peak_memory_stats()
        times = StepTimes()
        trainer.add_callback(times)
        trainer.train()
        seconds = min(times.seconds[1:])
        peak = torch.cuda.max_memory_allocated() / 2**20 if not cpu else float("nan")
        figures[name] = ([entry["loss"] for entry in trainer.state.log_history if "loss" in entry], seconds, peak)
        del trainer
    reference = figures["two rows a pair"][0]
    worst = max(
        abs(a - b) / max(abs(b), 1e-8)
        for name in layouts
        if name != "two rows a pair"
        for a, b in zip(figures[name][0], reference, strict=True)
    )
    tolerance = 1e-2 if not cpu else 1e-5
    steps = "; ".join(
        f"{name} {seconds:.2f} s" + ("" if cpu else f", {peak:.0f} MiB")
        for name, (_, seconds, peak) in figures.items()
    )
    device = "--device cpu --lengths 256,512" if cpu else "--device cuda"
    segments = run([sys.executable, "tests/benchmarks/bench_segments.py", *device.split()], timeout=300)
    print(segments)
    detail = f"worst relative loss gap to two rows {worst:.1e} (tolerance {tolerance:.0e}); a step: {steps}"
    if worst > tolerance:
        raise AssertionError(detail)
    return detail


def check_server(cpu, model, data, work) -> str:
    """Server mode: `trl vllm-serve` on the packaged model (GPU 0), then `generate` against it with the log-probability
    filter (`get_sequence_logprobs`) from GPU 1. TRL's `VLLMGeneration` opens the NCCL link that carries a new
    policy's weights when it starts, and NCCL cannot join two processes on one GPU: the check needs two GPUs (the
    weight push itself is tested on CPU with a stand-in transfer, tests/test_vllm.py)."""
    if cpu:
        raise NotRun("vLLM needs a GPU (server mode is tested on CPU against a stand-in server)")
    import torch

    if torch.cuda.device_count() < 2:
        raise NotRun("server mode needs two GPUs: TRL opens an NCCL link to the server, which has a GPU of its own")
    from conftest import free_port

    port = free_port()
    env = {
        **os.environ,
        "VLLM_SERVER_DEV_MODE": "1",
        "CUDA_VISIBLE_DEVICES": "0",
    }
    serve = ["trl", "vllm-serve", "--model", model, "--port", str(port), "--gpu_memory_utilization", "0.3"]
    server = subprocess.Popen(serve, env=env, stdout=subprocess.DEVNULL, stderr=open(work / "server.log", "w"))
    try:
        out = work / "server-run"
        argv = (
            f"generate --model_name_or_path {model} --output_dir {out} --num_prompts 16 --batch_size 16 "
            f"--max_completion_length 32 --use_vllm --vllm_mode server --vllm_server_base_url http://127.0.0.1:{port} "
            "--vllm_server_timeout 300 --logprob_filter --drop_revealing false"
        ).split()
        run(["trl-sso", *argv], timeout=500, env={**os.environ, "CUDA_VISIBLE_DEVICES": "1"})
        summary = json.loads((out / "summary.json").read_text())
    finally:
        server.terminate()
        server.wait(timeout=60)
    return f"{summary['num_records']} records of 16 prompts from the server, dropped {summary['dropped']}"


CHECKS = {
    "bf16 loss parity": check_bf16,
    "vLLM backend": check_vllm,
    "FSDP2": check_fsdp2,
    "QLoRA (bitsandbytes)": check_qlora,
    "step time vs DPO": check_step_time,
    "recipe path (iterate)": check_recipe_path,
    "layouts on the device": check_layouts,
    "vLLM server mode": check_server,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="Dry run on CPU (tiny model, vLLM not run).")
    parser.add_argument("--only", nargs="*", choices=list(CHECKS), help="Run only these checks.")
    cli = parser.parse_args()
    if not cli.cpu:
        import torch

        if not torch.cuda.is_available():
            print("No GPU found: run with --cpu for the dry run.", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="trl-sso-gpu-checks-"))
    model, data = model_path(cli.cpu, work), training_data(work)
    rows, failed = [], False
    for name, check in CHECKS.items():
        if cli.only and name not in cli.only:
            continue
        start = time.perf_counter()
        try:
            status, detail = "pass", check(cli.cpu, model, data, work)
        except NotRun as reason:
            status, detail = "not run", str(reason)
        except Exception as error:  # every failure goes in the table; the trace goes to stderr
            traceback.print_exc()
            status, detail, failed = "FAIL", f"{type(error).__name__}: {str(error)[:300]}", True
        rows.append((name, status, time.perf_counter() - start, detail))
        print(f"[{status}] {name} ({rows[-1][2]:.0f} s): {detail}", flush=True)
    print(f"\ntrl-sso GPU checks ({'CPU dry run' if cli.cpu else 'GPU'}), work folder {work}\n")
    print(f"| {'check':<22} | {'result':<7} | {'seconds':>7} | detail")
    print(f"|{'-' * 24}|{'-' * 9}|{'-' * 9}|{'-' * 40}")
    for name, status, seconds, detail in rows:
        print(f"| {name:<22} | {status:<7} | {seconds:>7.0f} | {detail}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
