"""Cards rendered from the templates in `cards/` (shipped in the wheel as `trl_sso/cards`), filled from the metadata
the artifacts carry (the trainer's config and state), never typed by hand and never holding secrets."""

import textwrap
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any


SSO_CITATION = textwrap.dedent("""\
    @article{xiang2024sso,
        title   = {{Aligning Large Language Models via Self-Steering Optimization}},
        author  = {Hao Xiang and Bowen Yu and Hongyu Lin and Keming Lu and Yaojie Lu and Xianpei Han and Le Sun and Jingren Zhou and Junyang Lin},
        journal = {arXiv preprint arXiv:2410.17131},
        year    = {2024},
        url     = {https://huggingface.co/papers/2410.17131},
    }""")

TRL_CITATION = textwrap.dedent("""\
    @software{vonwerra2020trl,
        title   = {{TRL: Transformers Reinforcement Learning}},
        author  = {von Werra, Leandro and Belkada, Younes and Tunstall, Lewis and Beeching, Edward and Thrush, Tristan and Lambert, Nathan and Huang, Shengyi and Rasul, Kashif and Gallouédec, Quentin},
        license = {Apache-2.0},
        url     = {https://github.com/huggingface/trl},
        year    = {2020},
    }""")

_OBJECTIVE_SUMMARY = {
    "policy": "paper v1: the main pair plus the weighted steering pairs",
    "generator": "paper v2: the two steering pairs, to train a data generator",
}
# Config fields shown on the model card: the SSO method, the base loss and the optimisation (no paths, no tokens).
_CARD_SETTINGS = (
    "sso_objective", "sso_steer_coef", "sso_use_weight", "sso_weight_alpha", "sso_detach_weight", "sso_sft_coef",
    "loss_type", "beta", "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
    "gradient_accumulation_steps", "max_length", "seed",
)


def template_path(name: str) -> Path:
    """Path of a card template: inside the installed package, or in the source tree's `cards/` folder."""
    for folder in (Path(__file__).parent / "cards", Path(__file__).parent.parent / "cards"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"Card template {name!r} not found; the trl-sso installation is incomplete.")


def framework_versions() -> list[tuple[str, str]]:
    out = []
    for package, name in (("trl-sso", "trl-sso"), ("trl", "TRL"), ("transformers", "Transformers"),
                          ("torch", "PyTorch"), ("datasets", "Datasets"), ("peft", "PEFT")):
        try:
            out.append((name, version(package)))
        except PackageNotFoundError:
            continue
    return out


def sso_model_card(
    args: Any,
    model_name: str,
    base_model: str | None,
    dataset_name: str | None,
    hub_model_id: str | None,
    tags: list[str],
    is_adapter: bool,
):
    """The model card of an SSO-trained model or adapter (`library_name: peft` for adapters)."""
    from huggingface_hub import ModelCard, ModelCardData

    settings = [(name, getattr(args, name)) for name in _CARD_SETTINGS if hasattr(args, name)]
    card_data = ModelCardData(
        base_model=base_model,
        datasets=dataset_name,
        library_name="peft" if is_adapter else "transformers",
        model_name=model_name,
        tags=tags,
        pipeline_tag="text-generation",
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path("sso_model_card.md")),
        model_name=model_name,
        base_model=base_model,
        dataset_name=dataset_name,
        repo_id=hub_model_id or model_name,
        is_adapter=is_adapter,
        objective=args.sso_objective,
        objective_summary=_OBJECTIVE_SUMMARY[args.sso_objective],
        settings=settings,
        versions=framework_versions(),
        paper_id="2410.17131",
        sso_citation=SSO_CITATION,
        trl_citation=TRL_CITATION,
    )
