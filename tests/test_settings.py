"""One settings tree: ``gnbsched serve --help`` lists every setting with its environment
variable and default, and every flag lands in the setting it names."""

from __future__ import annotations

import argparse
import os

import pytest

from service.api.serve import (
    FLAG_ALIASES,
    NOT_FLAGS,
    add_arguments,
    setting_fields,
    settings_from_args,
)
from service.cli import main
from service.config import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_arguments(parser)
    return parser


def test_help_lists_every_setting_with_env_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    names = [name for name, _ in setting_fields()]
    assert "teacher_url" in names and "seed" in names
    for name in names:
        env = f"GNBSCHED_{name.upper()}"
        if name in NOT_FLAGS:
            assert f"--{name.replace('_', '-')} " not in text
            continue
        assert f"--{name.replace('_', '-')}" in text, name
        assert f"env {env}; default" in text, name


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GNBSCHED_SEED", "7")
    monkeypatch.setenv("GNBSCHED_EWMA_SLOTS", "50")
    args = _parser().parse_args(
        [
            "--seed",
            "3",
            "--fallbacks",
            "pf,greedy",
            "--no-guard-enabled",
            "--guard-reference",
            '{"mac": "rr"}',
            "--policy-mac",
            "pf",
            "--admin",
        ]
    )
    s = settings_from_args(args)
    assert s.seed == 3 and s.ewma_slots == 50.0  # flag wins, environment kept where no flag
    assert s.fallbacks == ["pf", "greedy"] and s.guard_enabled is False
    assert s.guard_reference == {"mac": "rr"} and s.default_policy_mac == "pf" and s.admin_enabled is True


def test_aliases_name_real_settings_and_secrets_are_not_flags() -> None:
    names = {name for name, _ in setting_fields()}
    assert set(FLAG_ALIASES) <= names and NOT_FLAGS <= names
    with pytest.raises(SystemExit):  # no flag, and no abbreviation of --auth-token-file either
        _parser().parse_args(["--auth-token", "secret"])
    with pytest.raises(SystemExit):
        main(["serve", "--auth-token", "secret"])


def test_a_section_flag_keeps_the_section_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GNBSCHED_TEACHER_MODEL", "qwen")
    monkeypatch.setenv("GNBSCHED_TEACHER_URL", "http://127.0.0.1:9/v1")
    s = settings_from_args(_parser().parse_args(["--teacher-max-tokens", "77"]))
    assert s.teacher.max_tokens == 77 and s.teacher.model == "qwen" and s.teacher.url == "http://127.0.0.1:9/v1"
    assert Settings().teacher.model == "qwen"  # the environment reaches the section without flags


def test_exported_settings_rebuild_the_same_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.api.serve import export_settings

    for key in [k for k in os.environ if k.startswith("GNBSCHED_")]:
        monkeypatch.delenv(key)
    s = settings_from_args(
        _parser().parse_args(["--seed", "5", "--teacher-url", "http://h:1/v1", "--guard-reference", '{"mac": "rr"}'])
    )
    s = s.model_copy(update={"teacher": s.teacher.model_copy(update={"api_key": "k3y"})})
    with monkeypatch.context() as m:
        m.setattr("os.environ", dict(os.environ))
        export_settings(s)
        again = Settings()
    assert again.seed == 5 and again.teacher.url == "http://h:1/v1" and again.guard_reference == {"mac": "rr"}
    assert again.teacher.api_key is not None and again.teacher.api_key.get_secret_value() == "k3y"
    assert "k3y" not in str(again.public())


def test_policy_sets_both_presets() -> None:
    s = settings_from_args(_parser().parse_args(["--policy", "km"]))
    assert s.default_policy_spectrum == "km" and s.default_policy_mac == "km"


def test_preload_defaults_to_the_presets_default_policies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset: the policies a request without ``policy`` gets are loaded before readiness (the
    first slot does not pay for a model load); a list replaces them; an empty one loads none."""
    monkeypatch.delenv("GNBSCHED_PRELOAD_POLICIES", raising=False)
    assert Settings().preloaded_policies() == ["student", "auction"]
    assert settings_from_args(_parser().parse_args(["--policy", "km"])).preloaded_policies() == ["km"]
    s = settings_from_args(_parser().parse_args(["--policy-mac", "pf", "--preload", "greedy,km"]))
    assert s.preloaded_policies() == ["greedy", "km"]
    assert settings_from_args(_parser().parse_args(["--preload", ""])).preloaded_policies() == []
    monkeypatch.setenv("GNBSCHED_PRELOAD_POLICIES", "[]")
    assert Settings().preloaded_policies() == []
