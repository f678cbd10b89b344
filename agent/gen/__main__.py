"""Regenerate the committed gRPC code: ``python -m agent.gen [--out DIR]``.

Runs grpc_tools' protoc on ``agent/proto/bronze/agent/v1/agent.proto`` and rewrites the one
absolute import protoc emits (``from bronze.agent.v1 import agent_pb2``) so the modules live in
this package (``agent.gen``) and import each other when installed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.gen import generate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.gen")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
