"""Regenerate the Python code of the gRPC contract into ``service/api/grpc/gen/``.

Usage (from the repository root, with the ``test`` extra installed for ``grpcio-tools``)::

    python proto/generate.py            # rewrite service/api/grpc/gen/
    python proto/generate.py --check    # exit 1 if the committed code is stale

It runs ``grpc_tools.protoc`` with ``-I proto`` (so the descriptor keeps its versioned name
``gnbsched/v1/scheduler.proto``), writes ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py``,
makes the generated import relative (protoc emits ``from gnbsched.v1 import ...``, which only
works with ``gen/`` on ``sys.path``) and adds the package ``__init__.py`` files.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "service" / "api" / "grpc" / "gen"
PROTOS = ["gnbsched/v1/scheduler.proto"]
INIT_DOC = '"""Generated from proto/ by proto/generate.py. Do not edit."""\n'


def generate(out_dir: Path) -> list[Path]:
    """Generate into ``out_dir``; return the written files (relative to ``out_dir``)."""
    from grpc_tools import protoc  # the test extra: grpcio-tools

    out_dir.mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")  # google/protobuf/*.proto
    argv = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(PROTO_DIR / p) for p in PROTOS),
    ]
    if protoc.main(argv) != 0:
        raise SystemExit(f"protoc failed: {' '.join(argv)}")
    written: list[Path] = []
    for proto in PROTOS:
        pkg = Path(proto).parent  # gnbsched/v1
        grpc_py = out_dir / pkg / (Path(proto).stem + "_pb2_grpc.py")
        dotted = ".".join(pkg.parts)
        text = grpc_py.read_text()
        text = re.sub(rf"^from {re.escape(dotted)} import ", "from . import ", text, flags=re.M)
        grpc_py.write_text(text)
        for stem in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            written.append(pkg / (Path(proto).stem + stem))
        # package markers from gen/ down to the proto's package
        for depth in range(len(pkg.parts) + 1):
            init = Path(*pkg.parts[:depth], "__init__.py") if depth else Path("__init__.py")
            (out_dir / init).write_text(INIT_DOC)
            written.append(init)
    return sorted(set(written))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed code, write nothing")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output directory (default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.check:
        files = generate(args.out)
        print(f"generated {len(files)} files into {args.out}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
        stale = [
            str(f)
            for f in files
            if not (args.out / f).exists() or not filecmp.cmp(Path(tmp) / f, args.out / f, shallow=False)
        ]
    if stale:
        print("stale generated code (run python proto/generate.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    print("generated code is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
