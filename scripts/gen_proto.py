"""Generate the Python gRPC code (with type stubs) from protos/ into a package.

``make proto`` runs it into ``bridges/python/snakepit_bridge/_proto``; the test
``tests/unit/test_proto_fresh.py`` runs it into a temporary folder and fails
when the committed code differs, so the code can never drift from the proto.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
PACKAGE = "snakepit_bridge._proto"
DEFAULT_OUT = ROOT / "bridges" / "python" / "snakepit_bridge" / "_proto"


def generate(out: Path) -> list[Path]:
    """Write bridge_pb2.py, bridge_pb2_grpc.py and their .pyi stubs into ``out``."""
    bindir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            "snakepit/bridge/v1/bridge.proto",
        ]
        subprocess.run(cmd, check=True)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for src in sorted((Path(tmp) / "snakepit" / "bridge" / "v1").iterdir()):
            text = src.read_text()
            # protoc writes absolute imports of the proto path; the code lives in
            # a private package instead, so point them there.
            text = re.sub(r"^from snakepit\.bridge\.v1 import", f"from {PACKAGE} import", text, flags=re.M)
            text = re.sub(
                r"^import snakepit\.bridge\.v1\.bridge_pb2\b",
                f"import {PACKAGE}.bridge_pb2",
                text,
                flags=re.M,
            )
            text = text.replace("snakepit.bridge.v1.bridge_pb2", f"{PACKAGE}.bridge_pb2")
            dest = out / src.name
            dest.write_text(text)
            written.append(dest)
        init = out / "__init__.py"
        init.write_text('"""Generated from protos/ by scripts/gen_proto.py (make proto). Do not edit."""\n')
        written.append(init)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    for path in generate(args.out):
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


if __name__ == "__main__":
    main()
