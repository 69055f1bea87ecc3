"""``gnbsched finetune``: fine-tune an LLM teacher with TRL (needs the ``[finetune]`` extra).

gnbsched finetune tiny-model --out runs/tiny                     # a tiny local model (tests, smoke runs)
gnbsched finetune sft --model runs/tiny --out runs/sft --epochs 4 --lr 3e-3
gnbsched finetune sft --model runs/tiny --out runs/sft --epochs 8 --lr 3e-3 --resume
gnbsched finetune grpo --model runs/sft --out runs/grpo --max-steps 20 --rewards struct,perf,depth

Each command's options come from its dataclass in ``trainer.finetune.args`` (tyro): ``--help``
lists them with their defaults. TRL, transformers and torch are imported only to run.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from trainer.finetune.args import GrpoArgs, SftArgs, TinyModelArgs

#: command -> (module, its argument dataclass)
COMMANDS: dict[str, tuple[str, type]] = {
    "tiny-model": ("trainer.finetune.tiny", TinyModelArgs),
    "sft": ("trainer.finetune.sft", SftArgs),
    "grpo": ("trainer.finetune.grpo", GrpoArgs),
}
HELP = {
    "tiny-model": "build a tiny tokenizer + Qwen2 model locally (no download) for tests and smoke runs",
    "sft": "supervised fine-tuning on KM answers (trl.SFTTrainer), with a before/after held-out summary",
    "grpo": "GRPO with the project's reward functions (trl.GRPOTrainer), with a before/after held-out summary",
}
#: modules of the [finetune] extra (and of [train], which it includes)
EXTRA_MODULES = {"trl", "transformers", "peft", "datasets", "accelerate", "tokenizers", "torch", "tyro"}
#: argv never holds a NUL byte: a parser with this as its only prefix sees every argument as positional
_NO_PREFIX = "\0"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="finetune_command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        # the command's options (its dataclass) are parsed by tyro in run(): this parser only collects them
        sp = sub.add_parser(name, help=HELP[name], add_help=False, prefix_chars=_NO_PREFIX)
        sp.add_argument("argv", nargs=argparse.REMAINDER, metavar="OPTIONS", help=f"gnbsched finetune {name} --help")


def parse_command_args(command: str, argv: list[str]) -> Any:
    """The argument dataclass of ``command`` from its command-line options (tyro)."""
    import tyro

    return tyro.cli(COMMANDS[command][1], args=argv, prog=f"gnbsched finetune {command}", description=HELP[command])


def run(args: argparse.Namespace) -> int:
    try:
        command_args = parse_command_args(args.finetune_command, args.argv)
        importlib.import_module(COMMANDS[args.finetune_command][0]).main(command_args)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in EXTRA_MODULES:
            raise
        print(
            f"gnbsched finetune: needs {exc.name!r}; install the [finetune] extra: pip install -e '.[finetune]'",
            file=sys.stderr,
        )
        return 2
    return 0
