"""gnbsched: the gNB-side scheduling microservice and its tools.

Each subcommand lives in its own module, which provides ``add_arguments(parser)`` and
``run(args) -> int``; only the chosen one is imported."""

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
    "finetune": ("trainer.finetune.cli", "fine-tune an LLM teacher with TRL: sft, grpo (needs the [finetune] extra)"),
    "dataset": ("service.finetune.cli", "export prompt/completion JSONL for LLM fine-tuning"),
}


#: optional dependencies a subcommand may need, and the extra that installs them
OPTIONAL = {"torch": "train", "onnx": "train", "tyro": "train", "matplotlib": "bench"}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``gnbsched`` parser. Only the chosen subcommand's module is imported (``serve`` does
    not pull in the trainer or the benchmarks); with no subcommand in ``argv``, all are."""
    parser = argparse.ArgumentParser(prog="gnbsched", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None) if argv is not None else None
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        if chosen is not None and name != chosen:
            continue
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            extra = OPTIONAL.get((exc.name or "").split(".")[0])
            if extra is None:
                raise
            if name == chosen:
                parser.exit(
                    2,
                    f"gnbsched {name}: needs {exc.name!r}; install the [{extra}] extra: pip install -e '.[{extra}]'\n",
                )
            continue
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except ModuleNotFoundError as exc:
        extra = OPTIONAL.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        print(
            f"gnbsched {args.command}: needs {exc.name!r}; install the [{extra}] extra: pip install -e '.[{extra}]'",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
