"""``gnbsched`` command line. Each subcommand lives in its own module, which provides
``add_arguments(parser)`` and ``run(args) -> int``; they are imported only when used."""

from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("service.api.serve", "serve REST and gRPC on embedded defaults (in-process state)"),
    "simulate": ("service.api.simulate", "drive a running service from the simulators and print KPIs"),
    "bench": ("service.bench.cli", "benchmark policies on the papers' scenario grids"),
    "policies": ("service.policies.cli", "list the registered policies"),
    "train": ("trainer.cli", "train, distill and export the ONNX student (needs the [train] extra)"),
    "dataset": ("service.finetune.cli", "export prompt/completion JSONL for LLM fine-tuning"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gnbsched", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] in ("service", "trainer", "torch"):
                sub._name_parser_map.pop(name, None)  # module not built yet
                sub._choices_actions = [a for a in sub._choices_actions if a.dest != name]
                continue
            raise
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
