"""``gnbsched train <script>`` and ``python -m trainer.<script>``: tyro builds the command line
of each script from its argument dataclass (``trainer.args``)."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from trainer import distill, export, grpo, ppo
from trainer.args import DistillArgs, ExportArgs, GrpoArgs, PpoArgs
from trainer.cli import SCRIPTS, parse_script_args

from service.cli import main as gnbsched

REPO = Path(__file__).resolve().parents[2]
MODULES = {"distill": distill, "grpo": grpo, "ppo": ppo, "export": export}
_METAVAR = r"(?: (?:\{None\}\|)?(?:STR|INT|FLOAT))?"


def _flag(field: dataclasses.Field) -> str:
    return "--" + field.name.replace("_", "-")


def _options(help_text: str) -> dict[str, tuple[str, str]]:
    """``--flag`` -> (help text, default shown) of a tyro ``--help`` page."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", help_text)
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())
    text = text[text.index("show this help message and exit") + len("show this help message and exit") :]
    parts = re.split(rf"(?:^| )(--[a-z][a-z0-9-]*)(?:, --no-[a-z0-9-]+)?{_METAVAR} ", text.strip())
    assert parts[0] == "", parts[0]
    out = {}
    for flag, seg in zip(parts[1::2], parts[2::2], strict=True):
        m = re.fullmatch(r"(?:(.*) )?\(default: ([^()]*)\)", seg.strip())
        assert m, f"{flag}: no default in {seg!r}"
        out[flag] = (m.group(1) or "", m.group(2))
    return out


def _help(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        gnbsched(argv)
    assert exc.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_help_lists_every_option_with_its_docstring_and_default(script: str, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    options = _options(_help(capsys, ["train", script, "--help"]))
    cls = SCRIPTS[script][1]
    fields = dataclasses.fields(cls)
    assert set(options) == {_flag(f) for f in fields}
    for f in fields:
        doc, default = options[_flag(f)]
        assert doc.strip(), f"{cls.__name__}.{f.name} has no docstring"
        assert default in (str(f.default), repr(f.default)), (f.name, default, f.default)


def test_script_arguments_are_documented(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    options = _options(_help(capsys, ["train", "distill", "-h"]))
    assert "registered policy" in options["--teacher"][0]
    assert all(doc for doc, _ in options.values())


def test_options_reach_the_script(monkeypatch):
    got: list[object] = []
    for module in MODULES.values():
        monkeypatch.setattr(module, "main", got.append)
    assert (
        gnbsched(
            [
                "train",
                "distill",
                "--preset",
                "mac",
                "--teacher",
                "pf",
                "--dagger-rounds",
                "2",
                "--refine",
                "--learning-rate",
                "1e-3",
                "--dataset",
                "d.jsonl",
                "--out=runs/x",
            ]
        )
        == 0
    )
    assert gnbsched(["train", "grpo", "--init", "runs/sp", "--kl-coef", "0.1"]) == 0
    assert gnbsched(["train", "ppo", "--time-budget-s", "720", "--total-steps", "1000"]) == 0
    assert gnbsched(["train", "export", "--checkpoint", "runs/mac", "--no-set-latest", "--models-dir", "m"]) == 0
    assert gnbsched(["train", "distill"]) == 0
    assert got == [
        DistillArgs(
            preset="mac",
            teacher="pf",
            dagger_rounds=2,
            refine=True,
            learning_rate=1e-3,
            dataset="d.jsonl",
            out="runs/x",
        ),
        GrpoArgs(init="runs/sp", kl_coef=0.1),
        PpoArgs(time_budget_s=720.0, total_steps=1000),
        ExportArgs(checkpoint="runs/mac", set_latest=False, models_dir="m"),
        DistillArgs(),
    ]


def test_an_unknown_option_is_refused(monkeypatch):
    monkeypatch.setattr(distill, "main", lambda args: pytest.fail("ran"))
    with pytest.raises(SystemExit) as exc:
        gnbsched(["train", "distill", "--no-such-option", "1"])
    assert exc.value.code == 2


def _documented_commands() -> list[tuple[str, list[str]]]:
    """(script, options) of every ``gnbsched train <script> …`` / ``python -m trainer.<script> …``
    example in the docs and the scripts' docstrings."""
    found = []
    docs = [
        REPO / "README.md",
        REPO / "CONTRIBUTING.md",
        REPO / "models" / "README.md",
        *sorted((REPO / "docs").rglob("*.md")),
        *sorted((REPO / "models" / "trainer").glob("*.py")),
    ]
    pattern = re.compile(r"(?:gnbsched train|python -m trainer\.)\s*(distill|grpo|ppo|export)\b([^`\n#]*)")
    for path in docs:
        for m in pattern.finditer(re.sub(r"\\\n\s*", " ", path.read_text())):  # shell line continuations
            found.append((m.group(1), shlex.split(m.group(2))))
    return found


def test_the_documented_commands_parse():
    commands = _documented_commands()
    assert {s for s, _ in commands} == set(SCRIPTS)
    for script, argv in commands:
        assert isinstance(parse_script_args(script, argv), SCRIPTS[script][1]), (script, argv)


def test_export_writes_to_the_service_model_dir_setting_by_default(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("GNBSCHED_MODEL_DIR", str(tmp_path))
    assert export.default_models_dir() == tmp_path
    monkeypatch.delenv("GNBSCHED_MODEL_DIR")
    assert export.default_models_dir() == REPO / "models"


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_each_script_runs_as_a_module(script: str):
    out = subprocess.run(
        [sys.executable, "-m", f"trainer.{script}", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "400"},
    )
    assert out.returncode == 0, out.stderr
    assert set(_options(out.stdout)) == {_flag(f) for f in dataclasses.fields(SCRIPTS[script][1])}
