"""SSOConfig: defaults, validation errors, the bf16 fallback and the CLI-parsable fields."""

import dataclasses
import logging

import pytest

from trl_sso import SSOConfig


def test_defaults(tmp_path):
    args = SSOConfig(str(tmp_path))
    assert (args.sso_objective, args.sso_steer_coef, args.sso_use_weight) == ("policy", 0.1, True)
    assert (args.sso_weight_alpha, args.sso_detach_weight, args.sso_sft_coef) == (0.5, False, 0.0)
    assert SSOConfig(str(tmp_path), sso_objective="generator").sso_sft_coef == 0.1
    assert SSOConfig(str(tmp_path), sso_objective="generator", sso_sft_coef=0.0).sso_sft_coef == 0.0


def test_every_sso_field_has_help_and_a_docstring_entry():
    fields = [f for f in dataclasses.fields(SSOConfig) if f.name.startswith("sso_")]
    assert {f.name for f in fields} == {
        "sso_objective",
        "sso_steer_coef",
        "sso_use_weight",
        "sso_weight_alpha",
        "sso_detach_weight",
        "sso_sft_coef",
        "sso_backward_per_pair",
        "sso_share_prompt",
        "sso_share_across_pairs",
        "sso_principle_placement",
    }
    for f in fields:
        assert f.metadata["help"]
        assert f"{f.name} (`" in SSOConfig.__doc__


@pytest.mark.parametrize(
    "kwargs,fragments",
    [
        ({"sso_objective": "reward"}, ["`sso_objective`", "'policy'", "'generator'"]),
        ({"sso_weight_alpha": 1.5}, ["`sso_weight_alpha`", "[0, 1]"]),
        ({"sso_steer_coef": -0.1}, ["`sso_steer_coef`", "at least 0", "Use 0 to turn the term off"]),
        ({"sso_sft_coef": -1.0}, ["`sso_sft_coef`", "at least 0"]),
        ({"beta": float("nan")}, ["`beta`", "finite"]),
        ({"loss_type": "hinge2"}, ["`loss_type`", "'hinge2'", "'sigmoid'", "'sigmoid_norm'"]),
        ({"loss_type": ["sigmoid", "aot"]}, ["['aot'] sorts the examples", "`sso_use_weight=False`"]),
        ({"padding_free": True}, ["`padding_free=True`", "shared-prompt layout", "default (False)"]),
        ({"use_liger_kernel": True}, ["`use_liger_kernel=True`", "use_kernels"]),
    ],
)
def test_invalid_values_get_clear_errors(tmp_path, kwargs, fragments):
    with pytest.raises(ValueError) as error:
        SSOConfig(str(tmp_path), bf16=False, **kwargs)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_ipo_is_accepted_as_a_string(tmp_path):
    assert SSOConfig(str(tmp_path), loss_type="ipo").loss_type == ["ipo"]


def test_bf16_falls_back_to_fp32_on_cpu_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="trl_sso.config"):
        args = SSOConfig(str(tmp_path))
    assert args.bf16 is False
    assert "fp32" in caplog.text


def test_explicit_bf16_on_cpu_is_emulated_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="trl_sso.config"):
        args = SSOConfig(str(tmp_path), bf16=True)
    assert args.bf16 is True and args.use_cpu is True  # no accelerator here: CPU, so that multi-process runs use gloo
    assert "emulated" in caplog.text


def test_explicit_bf16_on_an_accelerator_without_it_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr("trl_sso.config.accelerator_available", lambda: True)  # e.g. a pre-Ampere GPU
    monkeypatch.setattr("trl_sso.config.bf16_available", lambda: False)
    from trl_sso.config import settle_device_and_precision

    args = type("Args", (), {"use_cpu": False, "bf16": True, "fp16": False})()
    with pytest.raises(ValueError, match="`bf16=True` was set.*`bf16=False`.*`use_cpu=True`"):
        settle_device_and_precision(args)


def test_fields_parse_from_the_command_line(tmp_path):
    from trl import TrlParser

    (args,) = TrlParser(SSOConfig).parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--sso_objective",
            "generator",
            "--sso_steer_coef",
            "0.2",
            "--sso_use_weight",
            "false",
            "--sso_weight_alpha",
            "0.66",
            "--loss_type",
            "ipo",
        ]
    )
    assert (args.sso_objective, args.sso_steer_coef, args.sso_use_weight) == ("generator", 0.2, False)
    assert args.sso_weight_alpha == 0.66 and args.loss_type == ["ipo"] and args.sso_sft_coef == 0.1


def test_stage_settings_are_checked_and_resolved_like_the_constructor(tmp_path):
    args = SSOConfig(str(tmp_path), report_to="none", sso_steer_coef=0.2)
    generator = args.for_stage(sso_objective="generator")
    assert generator.sso_sft_coef == 0.1 and args.sso_sft_coef == 0.0  # the new objective's default; args untouched
    assert args.for_stage(sso_objective="generator", sso_sft_coef=0.3).sso_sft_coef == 0.3
    tuned = SSOConfig(str(tmp_path), report_to="none", sso_objective="generator", sso_sft_coef=0.25)
    assert tuned.for_stage(sso_objective="generator").sso_sft_coef == 0.25  # configured for that objective: kept
    with pytest.raises(ValueError, match="`sso_weight_alpha`"):
        args.for_stage(sso_weight_alpha=1.5)  # the same range check as the constructor's
    with pytest.raises(ValueError, match="`sso_objective` must be one of"):
        args.for_stage(sso_objective="critic")
    with pytest.raises(TypeError, match="not `SSOConfig` fields"):
        args.for_stage(sso_steer=0.1)
