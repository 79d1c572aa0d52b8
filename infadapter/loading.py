"""Reading user-written YAML and JSON safely: one clear line on any problem, never a traceback or a hang.

YAML goes through PyYAML's safe loader (no Python objects, no code) with three more refusals that
user files never need and attackers do: aliases (``*name``; "billion laughs" documents expand without
bound once something walks them), duplicate mapping keys (the later one would silently win), and
nesting deeper than :data:`MAX_DEPTH`. JSON refuses ``NaN``/``Infinity`` (not JSON) and deep nesting.
Both raise :class:`~infadapter.errors.BadInput` naming the file and the line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

import yaml

from infadapter.errors import BadInput

MAX_DEPTH = 64  # levels of nested mappings/lists; our files need fewer than 10


class _Refused(yaml.YAMLError):
    def __init__(self, message: str, mark: Any) -> None:
        super().__init__(message)
        self.problem = message
        self.problem_mark = mark


class StrictSafeLoader(yaml.SafeLoader):
    """SafeLoader without aliases, duplicate keys or unbounded nesting."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(f"aliases (*{event.anchor}) are not allowed; write the value out in full", event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in seen:
                    raise _Refused(f"key {key_node.value[:60]!r} appears twice in one mapping", key_node.start_mark)
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, origin: str) -> Any:
    """Parse one YAML document strictly; BadInput ``"<origin>: not valid YAML at line N: why"``."""
    try:
        return yaml.load(text, Loader=StrictSafeLoader)  # a SafeLoader subclass: no Python objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc.__class__.__name__
        raise BadInput(f"{origin}: not valid YAML{where}: {_one_line(problem)}") from None
    except RecursionError:
        raise BadInput(f"{origin}: not valid YAML: nested too deeply") from None


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def load_json(text: str | bytes, origin: str) -> Any:
    """Parse JSON strictly (no NaN/Infinity, bounded nesting); BadInput naming the line otherwise."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{origin}: not valid JSON at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # from _refuse_constant, or bytes that are not UTF-8
        raise BadInput(f"{origin}: not valid JSON ({_one_line(str(exc))}); send finite numbers only") from None
    except RecursionError:
        raise BadInput(f"{origin}: not valid JSON: nested too deeply") from None


def finite_number(value: Any, where: str, low: float | None = None, unit: str = "") -> float:
    """``value`` as a finite float (not a bool, a string or None), at least ``low``; BadInput naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadInput(f"{where}: must be a number{unit and ' in ' + unit}, got {_short(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise BadInput(f"{where}: must be a finite number, got {_short(value)}")
    if low is not None and number < low:
        raise BadInput(f"{where}: must be >= {low:g}, got {number:g}")
    return number


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:200]


def strings(value: Any, where: str) -> tuple[str, ...]:
    """A list of strings as a tuple; BadInput naming ``where`` otherwise."""
    if not isinstance(value, list | tuple) or not all(isinstance(s, str) for s in value):
        raise BadInput(f"{where}: must be a list of strings")
    return tuple(value)


__all__: Iterable[str] = ("MAX_DEPTH", "StrictSafeLoader", "finite_number", "load_json", "load_yaml", "strings")
