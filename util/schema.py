"""Declared types, ranges and choices of config values and constructor arguments.

A schema is a ``{key: Spec}`` dict. ``check(node, schema, "trainer")`` returns every problem of a
config node (a wrong type, a value out of range, a missing required key, an unknown key with the
nearest valid names); ``SchemaError`` reports all of them in one message, and the command line
adds where each bad value was set (``util.config.value_source``). ``validate_args(schema, **args)``
is the same check for a constructor's arguments (the first problem as a ``ValueError``), so a
network's limits are written once and serve its config and its Python callers alike.

    TRAINER = {"max_epochs": Int(min=1), "precision": Choice("auto", "32", "bf16-mixed"),
               "gradient_clip_val": Float(min=0, min_open=True, nullable=True)}
"""
from __future__ import annotations

import difflib
import math
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional

from util.errors import ConfigError

__all__ = ["Spec", "Anything", "Int", "Float", "Bool", "Str", "Choice", "List", "AnyOf", "Section", "Problem", "SchemaError",
           "check", "validate_args", "nearest", "optional"]


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Spec:
    """One value's rule. ``nullable``: null is allowed; ``required``: the key must be present."""

    def __init__(self, *, nullable: bool = False, required: bool = True) -> None:
        self.nullable, self.required = nullable, required

    def describe(self) -> str:
        raise NotImplementedError

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def problem(self, value: Any) -> Optional[str]:
        """None when ``value`` is allowed, else what is allowed."""
        if value is None:
            return None if self.nullable else self.expected()
        if isinstance(value, str) and value == "???":
            return f"is not set ('???'): give {self.describe()}"
        return None if self.accepts(value) else self.expected()

    def expected(self) -> str:
        return f"must be {self.describe()}" + (" or null" if self.nullable else "")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Int(Spec):
    """A whole number (not a bool, not a float), optionally bounded."""

    def __init__(self, min: Optional[int] = None, max: Optional[int] = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.min, self.max = min, max

    def describe(self) -> str:
        bounds = [f">= {self.min}" if self.min is not None else "", f"<= {self.max}" if self.max is not None else ""]
        return "a whole number" + (" " + " and ".join(b for b in bounds if b) if any(bounds) else "")

    def accepts(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and \
            (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


class Float(Spec):
    """A finite number (ints too), in ``[min, max]``; ``min_open`` / ``max_open`` exclude the bound."""

    def __init__(self, min: Optional[float] = None, max: Optional[float] = None, *, min_open: bool = False,
                 max_open: bool = False, **kw: Any) -> None:
        super().__init__(**kw)
        self.min, self.max, self.min_open, self.max_open = min, max, min_open, max_open

    def describe(self) -> str:
        if self.min is not None and self.max is not None:
            return f"a number in {'(' if self.min_open else '['}{self.min:g}, {self.max:g}{')' if self.max_open else ']'}"
        if self.min is not None:
            return f"a number {'>' if self.min_open else '>='} {self.min:g}"
        if self.max is not None:
            return f"a number {'<' if self.max_open else '<='} {self.max:g}"
        return "a finite number"

    def accepts(self, value: Any) -> bool:
        if not _is_number(value) or not math.isfinite(value):
            return False
        if self.min is not None and (value <= self.min if self.min_open else value < self.min):
            return False
        if self.max is not None and (value >= self.max if self.max_open else value > self.max):
            return False
        return True


class Anything(Spec):
    """Any value (the key's presence is what is checked)."""

    def describe(self) -> str:
        return "any value"

    def accepts(self, value: Any) -> bool:
        return True


class Bool(Spec):
    def describe(self) -> str:
        return "true or false"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)


class Str(Spec):
    """A string, non-empty unless ``empty``."""

    def __init__(self, *, empty: bool = False, **kw: Any) -> None:
        super().__init__(**kw)
        self.empty = empty

    def describe(self) -> str:
        return "a string" if self.empty else "a non-empty string"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and (self.empty or value != "")


class Choice(Spec):
    """One of ``values`` (compared as strings too, so ``precision: 32`` matches ``"32"``)."""

    def __init__(self, *values: Any, **kw: Any) -> None:
        super().__init__(**kw)
        self.values = values

    def describe(self) -> str:
        return "one of " + ", ".join(str(v) for v in self.values)

    def accepts(self, value: Any) -> bool:
        return any(value == v or (not isinstance(value, bool) and str(value) == str(v)) for v in self.values)

    def problem(self, value: Any) -> Optional[str]:
        found = super().problem(value)
        if found and isinstance(value, str):
            close = nearest(value, [str(v) for v in self.values])
            if close:
                found += f" (did you mean {close}?)"
        return found


class List(Spec):
    """A list whose items all fit ``of``; ``length`` fixes its length, ``min_length`` bounds it."""

    def __init__(self, of: Spec, *, length: Optional[int] = None, min_length: int = 0, **kw: Any) -> None:
        super().__init__(**kw)
        self.of, self.length, self.min_length = of, length, min_length

    def describe(self) -> str:
        size = f"of {self.length} items" if self.length is not None else ("(non-empty)" if self.min_length else "")
        return f"a list {size}, each {self.of.describe()}".replace("  ", " ").replace(" ,", ",")

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, (list, tuple)):
            return False
        if (self.length is not None and len(value) != self.length) or len(value) < self.min_length:
            return False
        return all(item is not None and self.of.accepts(item) for item in value)


class AnyOf(Spec):
    """Any of several rules (e.g. a batch count or a fraction)."""

    def __init__(self, *specs: Spec, **kw: Any) -> None:
        super().__init__(**kw)
        self.specs = specs

    def describe(self) -> str:
        return " or ".join(s.describe() for s in self.specs)

    def accepts(self, value: Any) -> bool:
        return any(s.accepts(value) for s in self.specs)


class Section(Spec):
    """A nested mapping with its own schema. ``closed``: keys outside the schema are problems."""

    def __init__(self, schema: Mapping[str, Spec], *, closed: bool = True, **kw: Any) -> None:
        super().__init__(**kw)
        self.schema, self.closed = schema, closed

    def describe(self) -> str:
        return "a mapping"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, Mapping)


class Problem(NamedTuple):
    key: str        # full dotted key
    value: Any      # the value found (``...`` when the key is missing)
    message: str    # what is wrong, e.g. "must be a whole number >= 1"


MISSING_VALUE = ...


def nearest(name: str, names: Iterable[str], n: int = 3) -> str:
    """The valid names closest to ``name``, as ``a, b or c`` (empty when none is close)."""
    close = difflib.get_close_matches(str(name), [str(x) for x in names], n=n, cutoff=0.6)
    return close[0] if len(close) == 1 else (", ".join(close[:-1]) + " or " + close[-1] if close else "")


def check(node: Any, schema: Mapping[str, Spec], path: str, *, closed: bool = True) -> list[Problem]:
    """Every problem of the mapping ``node`` (at dotted ``path``) against ``schema``."""
    problems: list[Problem] = []
    if not isinstance(node, Mapping):
        return [Problem(path, node, "must be a mapping")]
    for key, spec in schema.items():
        full = f"{path}.{key}" if path else key
        if key not in node:
            if spec.required:
                problems.append(Problem(full, MISSING_VALUE, f"is missing: add it ({spec.describe()})"))
            continue
        value = node[key]
        found = spec.problem(value)
        if found:
            problems.append(Problem(full, value, found))
        elif isinstance(spec, Section) and value is not None:
            problems += check(value, spec.schema, full, closed=spec.closed)
    if closed:
        for key in node:
            if key not in schema:
                full = f"{path}.{key}" if path else str(key)
                close = nearest(key, schema)
                hint = f"; did you mean {close}?" if close else f"; known keys: {', '.join(schema)}"
                problems.append(Problem(full, node[key], f"is not a key that is read here{hint}"))
    return problems


class SchemaError(ConfigError):
    """All problems of a config at once. ``sources(key)`` may say where each bad value was set."""

    def __init__(self, problems: list[Problem], sources: Optional[Callable[[str], Optional[str]]] = None) -> None:
        self.problems = list(problems)
        self.sources = sources
        super().__init__(self._message())

    def with_sources(self, sources: Callable[[str], Optional[str]]) -> "SchemaError":
        return SchemaError(self.problems, sources)

    def _message(self) -> str:
        lines = []
        for p in self.problems:
            shown = "" if p.value is MISSING_VALUE else f" = {_show(p.value)}"
            where = self.sources(p.key) if self.sources is not None else None
            lines.append(f"  {p.key}{shown}: {p.message}" + (f" (set by {where})" if where else ""))
        head = "a config value is invalid" if len(lines) == 1 else f"{len(lines)} config values are invalid"
        return f"{head}; fix them in the config files or with overrides:\n" + "\n".join(lines)


def optional(schema: Mapping[str, Spec]) -> dict[str, Spec]:
    """The same rules for keys that may be absent (e.g. constructor arguments with defaults)."""
    import copy

    out = {}
    for key, spec in schema.items():
        out[key] = copy.copy(spec)
        out[key].required = False
    return out


def validate_args(schema: Mapping[str, Spec], **args: Any) -> None:
    """``ValueError`` naming the first argument that breaks its rule (constructors' checks)."""
    for name, value in args.items():
        found = schema[name].problem(value)
        if found:
            raise ValueError(f"{name} {found}, got {_show(value)}")
