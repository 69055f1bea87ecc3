"""``gnbsched dataset``: export prompt/completion JSONL for LLM fine-tuning (SFT, GRPO).

Examples::

    gnbsched dataset --preset spectrum --kind sft --out data/sft.jsonl
    gnbsched dataset --preset spectrum --kind grpo --scenarios u15-c20-b4,scale-I --slots 8 --out data/grpo.jsonl
"""

from __future__ import annotations

import argparse

from service.finetune.dataset import DatasetSpec, build_rows, write_jsonl
from service.serialize.prompt_options import ANSWER_FORMS, PromptOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=["spectrum", "mac"], default="spectrum", help="simulator preset")
    parser.add_argument(
        "--kind",
        choices=["sft", "grpo"],
        default="sft",
        help="sft: prompt + exact-solver completion; grpo: prompt + state only",
    )
    parser.add_argument("--out", required=True, help="output JSONL path")
    parser.add_argument(
        "--scenarios",
        default=None,
        help="comma-separated scenario names (default: the LSA grid for spectrum, the mac simulator's)",
    )
    parser.add_argument("--episodes", type=int, default=2, help="episodes per scenario (seeds seed, seed+1000, ...)")
    parser.add_argument("--slots", type=int, default=32, help="slots per episode")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulators and references")
    parser.add_argument("--solver", default="km", help="registered policy giving the SFT targets (default: km, exact)")
    parser.add_argument(
        "--format",
        choices=["chat", "text"],
        default="chat",
        help="chat: TRL conversational rows (messages); text: plain strings",
    )
    parser.add_argument("--budget", type=int, default=2048, help="prompt token budget")
    parser.add_argument(
        "--answer-form",
        choices=[*ANSWER_FORMS, "code"],
        default="auto",
        help="answer form: a JSON form, or code (a program schedule(state); SFT target: the reference program)",
    )
    parser.add_argument(
        "--no-system-role",
        action="store_true",
        help="merge the system message into the user turn (chat templates without a system role)",
    )


def run(args: argparse.Namespace) -> int:
    if args.episodes < 1 or args.slots < 1:
        raise SystemExit("--episodes and --slots must be >= 1")
    spec = DatasetSpec(
        preset=args.preset,
        kind=args.kind,
        scenarios=tuple(s.strip() for s in args.scenarios.split(",") if s.strip()) if args.scenarios else (),
        episodes=args.episodes,
        slots=args.slots,
        seed=args.seed,
        solver=args.solver,
        format=args.format,
        options=PromptOptions(
            budget_tokens=args.budget,
            answer_form="auto" if args.answer_form == "code" else args.answer_form,
            system_role=not args.no_system_role,
        ),
        code_form=args.answer_form == "code",
    )
    summary = write_jsonl(build_rows(spec), args.out)
    print(
        f"dataset: {int(summary['rows'])} {args.kind} rows ({args.preset}) -> {args.out}; prompt tokens "
        f"mean {summary['prompt_tokens_mean']:.0f}, max {summary['prompt_tokens_max']:.0f} (budget {args.budget})"
    )
    return 0
