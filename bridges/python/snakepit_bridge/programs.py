"""Session programs: objects a session builds once from a spec and runs many times.

The caller stores a program's spec in the session's data (Redis) and asks the
bridge to build it (``create_program``). Any bridge that later receives the
session (after a failover or a bridge restart) gets that data with
InitSession, and :meth:`ProgramMixin.build_programs` rebuilds every program
before the session's first call there, so ``execute_program`` keeps working.

The showcase's programs are small on purpose: a spec with a ``template``
formats its input into it; a spec with an ``operation`` and an ``operand``
applies it to a number; any other spec echoes its input.
"""

from __future__ import annotations

import os
from typing import Any

from snakepit_bridge.handler import Handler, InvalidArguments, command

__all__ = ["ProgramMixin"]

_OPERATIONS = {
    "add": lambda x, y: x + y,
    "multiply": lambda x, y: x * y,
    "subtract": lambda x, y: x - y,
}


def _build(program_id: str, spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise InvalidArguments(f"program {program_id!r}: spec must be an object, not {type(spec).__name__}")
    operation = spec.get("operation")
    if operation is not None and operation not in _OPERATIONS:
        raise InvalidArguments(
            f"program {program_id!r}: unknown operation {operation!r}; use {', '.join(_OPERATIONS)}"
        )
    return {"spec": spec, "built_by": os.getpid(), "runs": 0}


class ProgramMixin(Handler):
    """Adds ``create_program`` and ``execute_program`` (programs live in the session state)."""

    def build_programs(self, state: dict[str, Any], data: Any) -> None:
        """Rebuild the programs stored in a session's data (call from ``on_session_start``).

        A spec that no longer builds is kept as an error for ``execute_program``
        to report, rather than refusing the whole session.
        """
        programs: dict[str, Any] = state.setdefault("programs", {})
        stored = data.get("programs") if isinstance(data, dict) else None
        for program_id, spec in (stored or {}).items():
            try:
                programs[program_id] = _build(program_id, spec)
            except InvalidArguments as exc:
                programs[program_id] = {"error": str(exc)}

    @command
    def create_program(self, program_id: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Build a program from its spec into the session."""
        program = _build(program_id, spec)
        self.context.session.setdefault("programs", {})[program_id] = program
        return {"program_id": program_id, "built_by": program["built_by"]}

    @command
    def execute_program(self, program_id: str, input: Any = None) -> dict[str, Any]:
        """Run a program of the session on ``input``."""
        program = self.context.session.get("programs", {}).get(program_id)
        if program is None:
            raise InvalidArguments(f"the session has no program {program_id!r}")
        if "error" in program:
            raise InvalidArguments(program["error"])
        spec = program["spec"]
        if "template" in spec:
            if not isinstance(input, dict):
                raise InvalidArguments("a template program takes an object as input")
            output: Any = str(spec["template"]).format(**input)
        elif "operation" in spec:
            if isinstance(input, bool) or not isinstance(input, (int, float)):
                raise InvalidArguments("an operation program takes a number as input")
            output = _OPERATIONS[spec["operation"]](input, spec.get("operand", 0))
        else:
            output = input
        program["runs"] += 1
        return {
            "program_id": program_id,
            "output": output,
            "built_by": program["built_by"],
            "runs": program["runs"],
        }
