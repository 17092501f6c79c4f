"""The committed gRPC code must be what ``make proto`` makes from protos/ today."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "bridges" / "python" / "snakepit_bridge" / "_proto"


def _gen_proto() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    written = _gen_proto().generate(tmp_path)
    names = sorted(path.name for path in written)
    assert names == sorted(
        ["__init__.py", "bridge_pb2.py", "bridge_pb2.pyi", "bridge_pb2_grpc.py", "bridge_pb2_grpc.pyi"]
    )
    committed = sorted(path.name for path in COMMITTED.iterdir() if path.is_file())
    assert committed == names, "files in _proto/ that generate() does not make (or misses)"
    stale = [name for name in names if (tmp_path / name).read_text() != (COMMITTED / name).read_text()]
    assert not stale, f"_proto/ is stale against protos/ for {stale}: run `make proto`"
