"""Layered YAML configs composed the way hydra-core 1.3 composes them.

A small, dependency-light (PyYAML + standard library) re-implementation of the parts of
Hydra 1.3 (``version_base="1.3"``) and OmegaConf 2.3 that this project's users write:
defaults lists, packages, command-line overrides, interpolation, and multirun expansion.
``../shared/CONFIG_SPEC.md`` is the specification; ``tests/test_config_differential.py``
checks this module against fixtures produced by real hydra-core.

Public API::

    compose(config_dir, config_name, overrides=()) -> Config
    defaults_list(config_dir, config_name, overrides=()) -> list[dict]
    expand_sweeps(overrides, config_dir=None) -> list[list[str]]
    instantiate(node, **kwargs)
    to_yaml(cfg) -> str
    Config, ConfigError

Configs are plain nested ``dict``/``list`` trees while composing; interpolations stay as
strings (``"${a.b}"``) until the final resolve. ``"???"`` marks a missing value.
"""
from __future__ import annotations

import copy
import datetime as _dt
import fnmatch
import importlib
import itertools
import os
import re
from typing import Any, Iterable, Optional

import yaml

from util.errors import ConfigError, MissingKeyError

__all__ = [
    "Config",
    "ConfigError",
    "MissingKeyError",
    "config_path",
    "value_source",
    "compose",
    "defaults_list",
    "expand_sweeps",
    "instantiate",
    "load_yaml",
    "locate",
    "resolve_key",
    "parse_override",
    "to_yaml",
]

MISSING = "???"


class Config(dict):
    """A ``dict`` with attribute access; nested dicts (also inside lists) are ``Config`` too.

    Each node knows its dotted path from the root (``config_path(cfg.model.optim) == "model.optim"``), so
    reading a key that is not there (``cfg.model.optim.blr``) raises ``MissingKeyError`` (a
    ``ConfigError`` and an ``AttributeError``) naming the full key: the code reads config values
    without defaults of its own, and a config file that lacks one is refused with its name."""

    def __init__(self, *args: Any, _node_path: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        path = _node_path
        object.__setattr__(self, "_node_path", path)
        for key, value in self.items():
            dict.__setitem__(self, key, _to_config(value, _join(path, key)))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_node_path":  # copy / pickle probes; before __init__
            raise AttributeError(name)
        return self[name]

    def __getitem__(self, key: Any) -> Any:
        try:
            return dict.__getitem__(self, key)
        except KeyError:
            full = _join(self._node_path, key)
            raise MissingKeyError(
                f"the config has no key '{full}' (keys here: {', '.join(map(str, self)) or 'none'}); "
                f"add it to the config file that defines '{self._node_path or 'the root'}' or set it with "
                f"+{full}=...") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, _to_config(value, _join(self._node_path, key)))

    def __deepcopy__(self, memo: dict) -> "Config":
        return Config(copy.deepcopy(dict(self), memo), _node_path=self._node_path)

    def __reduce__(self):  # pickle (DataLoader workers, torch.distributed objects) keeps the path
        return (_rebuild_config, (dict(self), self._node_path))

    def to_dict(self) -> dict:
        """A plain ``dict``/``list`` copy (e.g. for ``json.dumps`` or ``yaml`` dumping)."""
        return _plain(self)

    def select(self, key: str, default: Any = None) -> Any:
        """Value at dotted ``key`` (``"model.lr"``), or ``default`` when a part is absent."""
        node: Any = self
        for part in key.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return default
        return node


def _rebuild_config(items: dict, path: str) -> Config:
    return Config(items, _node_path=path)


def config_path(node: Any) -> str:
    """The dotted path of a ``Config`` node from the root (``""`` for the root or plain dicts)."""
    return getattr(node, "_node_path", "") if isinstance(node, Config) else ""


def _nearest(name: str, names: list, prefix: str = "") -> str:
    """The names closest to ``name`` (``a``, or ``a, b or c``; empty when none is close)."""
    import difflib

    close = [prefix + c for c in difflib.get_close_matches(name, names, n=3, cutoff=0.6)]
    return close[0] if len(close) == 1 else (", ".join(close[:-1]) + " or " + close[-1] if close else "")


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _to_config(value: Any, path: str = "") -> Any:
    if isinstance(value, dict) and not (isinstance(value, Config) and value._node_path == path):
        return Config(value, _node_path=path)
    if isinstance(value, list):
        return [_to_config(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _plain(value: Any) -> Any:
    """A deep copy made of plain ``dict``/``list`` (also used to never alias merged sources)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# ----------------------------------------------------------------------------------------
# YAML: SafeLoader with OmegaConf's changes (float rule, no timestamps, duplicate keys)
# ----------------------------------------------------------------------------------------

_OMEGACONF_FLOAT = re.compile(
    r"""^(?:
     [-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)

_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_BaseDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _omegaconf_resolvers(base: dict) -> dict:
    resolvers = {
        first: [(tag, rx) for tag, rx in entries if tag != "tag:yaml.org,2002:timestamp"]
        for first, entries in base.items()
    }
    for first in "-+0123456789.":
        resolvers.setdefault(first, []).append(("tag:yaml.org,2002:float", _OMEGACONF_FLOAT))
    return resolvers


class _Loader(_BaseLoader):  # type: ignore[misc, valid-type]
    pass


_Loader.yaml_implicit_resolvers = _omegaconf_resolvers(yaml.SafeLoader.yaml_implicit_resolvers)


def _construct_mapping(loader: Any, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"found duplicate key {key}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _Dumper(_BaseDumper):  # type: ignore[misc, valid-type]
    pass


# Strings that our loader would read as another type (e.g. "1e-5") must be quoted on output.
_Dumper.yaml_implicit_resolvers = _omegaconf_resolvers(yaml.SafeDumper.yaml_implicit_resolvers)
_Dumper.add_representer(Config, yaml.representer.SafeRepresenter.represent_dict)


def load_yaml(text: str, source: str = "<string>") -> Any:
    """Parse YAML the way OmegaConf does; a syntax error or duplicate key is a ``ConfigError``."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"Cannot read YAML in '{source}':\n{e}") from None


def to_yaml(cfg: Any) -> str:
    """Block-style YAML with keys in insertion order (like ``OmegaConf.to_yaml``)."""
    return yaml.dump(_plain(cfg), Dumper=_Dumper, default_flow_style=False,
                     allow_unicode=True, sort_keys=False)


def _package_header(text: str) -> Optional[str]:
    """``# @package X`` from the leading comment lines; any other line ends the header."""
    package = None
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if not re.match(r"^#\s*@", line):
            break
        parts = line.lstrip("#").strip().split()
        if len(parts) != 2:
            raise ConfigError(f"Expected header format '# @KEY VALUE', got '{line}'")
        if parts[0] == "@package":
            package = parts[1]
    return package


# ----------------------------------------------------------------------------------------
# Config repository: one folder of YAML files, parsed files cached by (mtime, size)
# ----------------------------------------------------------------------------------------

class _Loaded:
    __slots__ = ("header", "body", "defaults")

    def __init__(self, header: Optional[str], body: Any, defaults: list) -> None:
        self.header = header
        self.body = body  # dict (never mutated after load), or None for an empty file
        self.defaults = defaults  # raw entries; parsed per use because parsing mutates them


_FILE_CACHE: dict[str, tuple[tuple[int, int], _Loaded]] = {}


class _Repo:
    def __init__(self, config_dir: str) -> None:
        self.root = os.path.abspath(config_dir)
        if not os.path.isdir(self.root):
            raise ConfigError(f"Config directory '{config_dir}' does not exist.")
        self._loaded: dict[str, Optional[_Loaded]] = {}
        self._isdir: dict[str, bool] = {}

    def _file(self, config_path: str) -> str:
        return os.path.join(self.root, config_path + ".yaml")

    def group_exists(self, group: str) -> bool:
        if group not in self._isdir:
            self._isdir[group] = bool(group) and os.path.isdir(os.path.join(self.root, group))
        return self._isdir[group]

    def config_exists(self, config_path: str) -> bool:
        return os.path.isfile(self._file(config_path))

    def group_options(self, group: str) -> list[str]:
        folder = os.path.join(self.root, group)
        if not os.path.isdir(folder):
            return []
        return sorted(f[:-5] for f in os.listdir(folder)
                      if f.endswith(".yaml") and os.path.isfile(os.path.join(folder, f)))

    def nested_options(self, group: str) -> list[str]:
        """The options of ``group`` and of its sub-folders (``pre_training/ecg_demo``), for messages."""
        folder = os.path.join(self.root, group)
        found = []
        for base, dirs, files in os.walk(folder):
            dirs.sort()
            rel = os.path.relpath(base, folder)
            found += [f[:-5] if rel == "." else f"{rel}/{f[:-5]}".replace(os.sep, "/")
                      for f in sorted(files) if f.endswith(".yaml")]
        return found

    def load(self, config_path: str) -> Optional[_Loaded]:
        if config_path in self._loaded:
            return self._loaded[config_path]
        path = self._file(config_path)
        try:
            st = os.stat(path)
        except OSError:
            self._loaded[config_path] = None
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        cached = _FILE_CACHE.get(path)
        if cached is not None and cached[0] == stamp:
            loaded = cached[1]
        else:
            loaded = self._parse(config_path, path)
            _FILE_CACHE[path] = (stamp, loaded)
        self._loaded[config_path] = loaded
        return loaded

    @staticmethod
    def _parse(config_path: str, path: str) -> _Loaded:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            header = _package_header(text)
        except ConfigError as e:
            raise ConfigError(f"In '{config_path}': {e}") from None
        body = load_yaml(text, path)
        defaults: list = []
        if body is not None and not isinstance(body, dict):
            raise ConfigError(
                f"Config '{config_path}' ({path}) must be a mapping at the top level, "
                f"got {type(body).__name__}.")
        if isinstance(body, dict) and "defaults" in body:
            body = dict(body)
            defaults = body.pop("defaults")
            if defaults is None:
                defaults = []
            if not isinstance(defaults, list):
                kind = "mapping" if isinstance(defaults, dict) else type(defaults).__name__
                raise ConfigError(
                    f"Invalid defaults list in '{config_path}', defaults must be a list (got {kind})")
        return _Loaded(header, body, defaults)


# ----------------------------------------------------------------------------------------
# Defaults list elements (semantics of hydra.core.default_element)
# ----------------------------------------------------------------------------------------

class _Default:
    """One entry of a defaults list: a config (``- name``) or a group choice (``- group: opt``)."""

    def __init__(self, *, path: Optional[str] = None, group: Optional[str] = None,
                 value: Any = None, package: Optional[str] = None, optional: bool = False,
                 override: bool = False, primary: bool = False, external_append: bool = False):
        self.is_group = group is not None
        self.path = path
        self.group = group
        self.value = value
        self.package = "" if package == "_here_" else package
        self.optional = optional
        self.override = override
        self.primary = primary
        self.external_append = external_append
        self.deleted = False
        self.parent_base_dir: Optional[str] = None
        self.parent_package: Optional[str] = None
        self.package_header: Optional[str] = None

    # -- identity -------------------------------------------------------------------------
    def is_self(self) -> bool:
        return (self.value if self.is_group else self.path) == "_self_"

    def name(self) -> Optional[str]:
        if self.is_group:
            return self.value if not isinstance(self.value, list) else None
        return self.path.rsplit("/", 1)[-1]

    def group_path(self) -> str:
        if self.is_group:
            group, absolute = _strip_abs(self.group)
            return group if (self.parent_base_dir == "" or absolute) else f"{self.parent_base_dir}/{group}"
        path, absolute = _strip_abs(self.path)
        group = path.rsplit("/", 1)[0] if "/" in path else ""
        if absolute or self.parent_base_dir == "":
            return group
        return self.parent_base_dir if group == "" else f"{self.parent_base_dir}/{group}"

    def config_path(self) -> str:
        if self.is_group:
            return f"{self.group_path()}/{self.name()}"
        path, absolute = _strip_abs(self.path)
        if absolute or self.parent_base_dir == "":
            return path
        return f"{self.parent_base_dir}/{path}"

    def relative_group_path(self) -> str:
        if self.is_group:
            return _strip_abs(self.group)[0]
        path = _strip_abs(self.path)[0]
        return path.rsplit("/", 1)[0] if "/" in path else ""

    # -- packages ---------------------------------------------------------------------------
    def update_parent(self, base_dir: str, package: str) -> None:
        self.parent_base_dir = base_dir
        self.parent_package = package

    def set_package_header(self, header: Optional[str]) -> None:
        if header is None:
            return
        if header != "_global_" and not header.startswith("_global_."):
            header = "_global_" if header == "" else f"_global_.{header}"
        self.package_header = header

    def own_package(self, use_header: bool = True) -> Optional[str]:
        if self.package is None and use_header:
            return self.package_header
        return self.package

    def final_package(self, use_header: bool = True) -> str:
        package = self.own_package(use_header)
        if package is None:
            package = self.relative_group_path().replace("/", ".")
        parent = self.parent_package or ""
        if parent == "":
            full = package
        else:
            full = parent if package == "" else f"{parent}.{package}"
        i = full.rfind("_global_")
        return full if i == -1 else full[i + len("_global_") + 1:]

    def override_key(self) -> str:
        default_package = self.group_path().replace("/", ".")
        final = self.final_package(use_header=False)
        key = self.group_path()
        if default_package != final:
            key = f"{key}@{final or '_global_'}"
        return key

    def relative_override_key(self) -> str:
        key = self.group
        if self.package is not None and self.group_path().replace("/", ".") != self.own_package():
            key = f"{key}@{self.package}"
        return key

    # -- flags ------------------------------------------------------------------------------
    def is_missing(self) -> bool:
        return self.name() == MISSING

    def is_interpolation(self) -> bool:
        text = self.value if self.is_group else self.config_path()
        return isinstance(text, str) and "${" in text

    def describe(self) -> str:
        return f"{self.override_key()}: {self.name()}" if self.is_group else self.config_path()


def _strip_abs(path: str) -> tuple[str, bool]:
    return (path[1:], True) if path.startswith("/") else (path, False)


def _parse_defaults_entries(config_path: str, raw: list) -> list[_Default]:
    result = []
    for item in raw:
        if isinstance(item, dict):
            if len(item) != 1:
                what = "Too many keys" if item else "Missing group name"
                raise ConfigError(f"In '{config_path}': {what} in default item {item}")
            (key, value), = item.items()
            if not isinstance(key, str):
                raise ConfigError(f"In '{config_path}': defaults list keys must be strings, got {key!r}")
            words = key.split(" ")
            group_spec = words[-1]
            optional = override = False
            for word in words[:-1]:
                if word == "optional":
                    optional = True
                elif word == "override":
                    override = True
                else:
                    break
            group, package = _split_at(group_spec)
            if value is not None and not isinstance(value, (str, list)):
                raise ConfigError(
                    f"In '{config_path}': Unsupported item value in defaults : {type(value).__name__}."
                    " Supported: string or list")
            if isinstance(value, list) and not all(isinstance(v, str) for v in value):
                raise ConfigError(
                    f"In '{config_path}': Unsupported item value in defaults: nested list items must be strings")
            if group == "":
                raise ConfigError(f"In '{config_path}': Missing group name in {item}")
            result.append(_Default(group=group, value=list(value) if isinstance(value, list) else value,
                                   package=package, optional=optional, override=override))
        elif isinstance(item, str):
            path, package = _split_at(item)
            if path == "_self_" and package is not None:
                raise ConfigError(f"In '{config_path}': _self_@PACKAGE is not supported")
            result.append(_Default(path=path, package=package))
        else:
            raise ConfigError(
                f"In '{config_path}': Unsupported type in defaults : {type(item).__name__}")
    return result


def _split_at(spec: str) -> tuple[str, Optional[str]]:
    if "@" not in spec:
        return spec, None
    group, package = spec.split("@", 1)
    return group, package.split(":", 1)[0]


# ----------------------------------------------------------------------------------------
# Command-line override grammar (Hydra's OverrideLexer/OverrideParser, hand-written)
# ----------------------------------------------------------------------------------------

class Quoted(str):
    """A string that was quoted on the command line (keeps its quote for re-serialisation)."""

    quote = "'"

    def __new__(cls, text: str, quote: str) -> "Quoted":
        obj = super().__new__(cls, text)
        obj.quote = quote
        return obj


class Sweep:
    """A value that stands for several jobs: ``a,b`` / ``choice`` / ``range`` / ``glob`` / ``interval``."""

    def __init__(self, kind: str, items: Any = None, simple: bool = False, **extra: Any) -> None:
        self.kind = kind  # 'choice' | 'range' | 'glob' | 'interval'
        self.items = items
        self.simple = simple
        self.extra = extra
        self.tags: set = set()
        self.shuffle = False

    def values(self, group_options: Optional[list] = None) -> list:
        if self.kind == "choice":
            return list(self.items)
        if self.kind == "range":
            start, stop, step = self.extra["start"], self.extra["stop"], self.extra["step"]
            if all(isinstance(v, int) and not isinstance(v, bool) for v in (start, stop, step)):
                return list(range(start, stop, step))
            out, x = [], float(start)
            while (step > 0 and x < stop) or (step < 0 and x > stop):
                out.append(x)
                x += step
            return out
        if self.kind == "glob":
            include, exclude = self.extra["include"], self.extra["exclude"]
            return [n for n in (group_options or [])
                    if any(fnmatch.fnmatch(n, g) for g in include)
                    and not any(fnmatch.fnmatch(n, g) for g in exclude)]
        raise ConfigError(f"{self.kind}() cannot be enumerated; it is only for hyperparameter search")


class Override:
    """One parsed ``[~|+|++]key[@pkg][=value]`` command-line argument."""

    def __init__(self, kind: str, key: str, package: Optional[str], value: Any,
                 has_value: bool, line: str) -> None:
        self.kind = kind  # 'change' | 'add' | 'force_add' | 'delete'
        self.key = key
        self.package = package
        self.value_raw = value
        self.has_value = has_value
        self.line = line

    @property
    def is_sweep(self) -> bool:
        return isinstance(self.value_raw, Sweep)

    @property
    def is_hydra(self) -> bool:
        return self.key.startswith("hydra.") or self.key.startswith("hydra/")

    def value(self) -> Any:
        return _unquote(self.value_raw)

    def key_element(self) -> str:
        prefix = {"change": "", "add": "+", "force_add": "++", "delete": "~"}[self.kind]
        return prefix + (self.key if self.package is None else f"{self.key}@{self.package}")

    def value_str(self) -> str:
        return _value_to_str(self.value_raw)


def _unquote(value: Any) -> Any:
    if isinstance(value, Quoted):
        return str(value)
    if isinstance(value, list):
        return [_unquote(v) for v in value]
    if isinstance(value, dict):
        return {_unquote(k): _unquote(v) for k, v in value.items()}
    return value


_ESC_CHARS = "\\()[]{}:=, \t"
_ESC_RUN = re.compile("[" + re.escape(_ESC_CHARS) + "]+")


def _value_to_str(value: Any) -> str:
    """Inverse of the value grammar, as Hydra writes job overrides (``key=value``)."""
    if value is None:
        return "null"
    if isinstance(value, Quoted):
        q = value.quote
        text = str(value)
        if "\\" in text:  # backslashes right before a quote are doubled
            text = re.sub(r"(\\+)(?=" + re.escape(q) + r"|$)", lambda m: m.group(1) * 2, text)
        return q + text.replace(q, "\\" + q) + q
    if isinstance(value, list):
        return "[" + ",".join(_value_to_str(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_value_to_str(k)}:{_value_to_str(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        if not _ESC_RUN.search(value):
            return value
        out = value.replace("\\", "\\\\")
        for ch in set(_ESC_CHARS) - {"\\"}:
            out = out.replace(ch, "\\" + ch)
        return out
    return str(value)


_INT_U = r"(?:0|[1-9](?:_?[0-9])*)"
_POINT_FLOAT = rf"(?:{_INT_U}?\.[0-9](?:_?[0-9])*|{_INT_U}\.)"
_EXP_FLOAT = rf"(?:(?:{_POINT_FLOAT}|{_INT_U})[eE][+-]?[0-9](?:_?[0-9])*)"
_ID = r"[a-zA-Z_][a-zA-Z0-9_\-]*"
_KEY_SPECIAL = r"[a-zA-Z_$][a-zA-Z0-9_\-$]*"

# Value-mode tokens, tried in lexer-rule order; the longest match wins, ties go to the earlier rule.
_VALUE_TOKENS = [
    ("POPEN", re.compile(r"[ \t]*\([ \t]*")),
    ("COMMA", re.compile(r"[ \t]*,[ \t]*")),
    ("PCLOSE", re.compile(r"[ \t]*\)")),
    ("BOPEN", re.compile(r"\[[ \t]*")),
    ("BCLOSE", re.compile(r"[ \t]*\]")),
    ("DOPEN", re.compile(r"\{[ \t]*")),
    ("DCLOSE", re.compile(r"[ \t]*\}")),
    ("COLON", re.compile(r"[ \t]*:[ \t]*")),
    ("EQUAL", re.compile(r"[ \t]*=[ \t]*")),
    ("FLOAT", re.compile(rf"[+-]?(?:{_EXP_FLOAT}|{_POINT_FLOAT}|[Ii][Nn][Ff]|[Nn][Aa][Nn])")),
    ("INT", re.compile(rf"[+-]?{_INT_U}")),
    ("BOOL", re.compile(r"[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]")),
    ("NULL", re.compile(r"[Nn][Uu][Ll][Ll]")),
    ("UNQUOTED", re.compile(r"[/\-\\+.$%*@?|]")),
    ("ID", re.compile(_ID)),
    ("ESC", re.compile(r"(?:\\\\|\\\(|\\\)|\\\[|\\\]|\\\{|\\\}|\\:|\\=|\\,|\\ |\\\t)+")),
    ("WS", re.compile(r"[ \t]+")),
    ("QUOTED", re.compile(r"""(?:"(?:(?:\\\\)*|.*?[^\\](?:\\\\)*)"|'(?:(?:\\\\)*|.*?[^\\](?:\\\\)*)')""")),
    ("INTERP", re.compile(r"\$\{[^}]+\}")),
]
_PRIMITIVE_TOKENS = {"ID", "NULL", "INT", "FLOAT", "BOOL", "INTERP", "UNQUOTED", "COLON", "ESC", "WS"}
_DICT_KEY_TOKENS = {"ID", "NULL", "INT", "FLOAT", "BOOL", "UNQUOTED", "ESC", "WS"}


def _tokenize_value(text: str, line: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(text):
        best = None
        for name, rx in _VALUE_TOKENS:
            m = rx.match(text, pos)
            if m and m.end() > pos and (best is None or m.end() > best[1]):
                best = (name, m.end())
        if best is None:
            raise ConfigError(
                f"Error parsing override '{line}'\ntoken recognition error at: '{text[pos:]}'\n"
                "Quote the value ('...') or escape special characters with a backslash.")
        tokens.append((best[0], text[pos:best[1]]))
        pos = best[1]
    return tokens


class _ValueParser:
    """Recursive descent over the value tokens: value := element (',' element)* ."""

    def __init__(self, tokens: list, line: str) -> None:
        self.toks = tokens
        self.i = 0
        self.line = line

    def peek(self, offset: int = 0) -> Optional[str]:
        j = self.i + offset
        return self.toks[j][0] if j < len(self.toks) else None

    def fail(self, what: str) -> ConfigError:
        near = self.toks[self.i][1] if self.i < len(self.toks) else "<EOF>"
        return ConfigError(f"Error parsing override '{self.line}'\n{what} at '{near}'\n"
                           "See https://hydra.cc/docs/1.3/advanced/override_grammar/basic for the grammar; "
                           "quote the value or escape special characters with a backslash.")

    def expect(self, kind: str) -> str:
        if self.peek() != kind:
            raise self.fail(f"expected {kind}")
        self.i += 1
        return self.toks[self.i - 1][1]

    def parse_value(self) -> Any:
        first = self.element()
        if self.peek() == "COMMA":
            items = [first]
            while self.peek() == "COMMA":
                self.i += 1
                items.append(self.element())
            value: Any = Sweep("choice", items, simple=True)
        else:
            value = first
        if self.i != len(self.toks):
            raise self.fail("extraneous input")
        return value

    def element(self) -> Any:
        kind = self.peek()
        if kind == "ID" and self.peek(1) == "POPEN":
            return self.function()
        if kind == "BOPEN":
            self.i += 1
            items = []
            if self.peek() != "BCLOSE":
                items.append(self.element())
                while self.peek() == "COMMA":
                    self.i += 1
                    items.append(self.element())
            self.expect("BCLOSE")
            return items
        if kind == "DOPEN":
            self.i += 1
            out: dict = {}
            if self.peek() != "DCLOSE":
                while True:
                    key = self.primitive(_DICT_KEY_TOKENS, allow_quoted=False)
                    self.expect("COLON")
                    out[key] = self.element()
                    if self.peek() != "COMMA":
                        break
                    self.i += 1
            self.expect("DCLOSE")
            return out
        return self.primitive(_PRIMITIVE_TOKENS, allow_quoted=True)

    def primitive(self, allowed: set, allow_quoted: bool) -> Any:
        if allow_quoted and self.peek() == "QUOTED":
            text = self.toks[self.i][1]
            self.i += 1
            return Quoted(_unescape_quoted(text), text[0])
        start = self.i
        while self.peek() in allowed:
            self.i += 1
        toks = self.toks[start:self.i]
        if not toks:
            raise self.fail("mismatched input")
        if toks[0][0] == "WS":
            if len(toks) == 1:
                raise self.fail("Trying to parse a primitive that is all whitespaces")
            toks = toks[1:]
        if toks[-1][0] == "WS":
            toks = toks[:-1]
        if len(toks) > 1:
            return "".join(t[1][1::2] if t[0] == "ESC" else t[1] for t in toks)
        kind, text = toks[0]
        if kind == "INT":
            return int(text)
        if kind == "FLOAT":
            return float(text)
        if kind == "BOOL":
            return text.lower() == "true"
        if kind == "NULL":
            return None
        if kind == "ESC":
            return text[1::2]
        if kind == "COLON":
            return text
        return text

    def function(self) -> Any:
        name = self.expect("ID")
        self.expect("POPEN")
        args, kwargs = [], {}
        while self.peek() != "PCLOSE":
            if self.peek() == "ID" and self.peek(1) == "EQUAL":
                arg_name = self.toks[self.i][1]
                self.i += 2
                kwargs[arg_name] = self.element()
            else:
                if kwargs:
                    raise self.fail("positional argument follows keyword argument")
                args.append(self.element())
            if self.peek() == "COMMA":
                self.i += 1
            elif self.peek() != "PCLOSE":
                raise self.fail("expected ',' or ')'")
        self.expect("PCLOSE")
        try:
            return _call_function(name, [_unquote(a) for a in args],
                                  {k: _unquote(v) for k, v in kwargs.items()})
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(f"Error parsing override '{self.line}'\n{type(e).__name__} while evaluating "
                              f"'{name}': {e}") from None


def _unescape_quoted(text: str) -> str:
    q, body = text[0], text[1:]  # keep the closing quote for the pattern
    return re.sub(r"(\\+)" + re.escape(q), lambda m: m.group(0)[1::2], body)[:-1] \
        if re.search(r"\\+" + re.escape(q), body) else body[:-1]


def _cast(fn: Any, args: list, kwargs: dict) -> Any:
    value = kwargs.pop("value", None)
    if args and value is not None:
        raise TypeError("cannot use both position and named arguments")
    if value is None:
        if not args:
            raise TypeError("No positional args or value specified")
        value = args[0] if len(args) == 1 else Sweep("choice", list(args), simple=True)

    def one(v: Any) -> Any:
        if isinstance(v, list):
            return [one(x) for x in v]
        if isinstance(v, dict):
            return {k: one(x) for k, x in v.items()}
        if isinstance(v, Sweep):
            if v.kind == "choice":
                out = Sweep("choice", [one(x) for x in v.items], simple=v.simple)
            elif v.kind == "range" and fn in (int, float):
                out = Sweep("range", start=fn(v.extra["start"]), stop=fn(v.extra["stop"]),
                            step=fn(v.extra["step"]))
            elif v.kind == "interval" and fn in (int, float):
                out = Sweep("interval", start=fn(v.extra["start"]), end=fn(v.extra["end"]))
            else:
                raise ValueError(f"{v.kind} cannot be cast with {fn.__name__}")
            out.tags = v.tags
            return out
        if fn is bool:
            if isinstance(v, str):
                if v.lower() in ("true", "false"):
                    return v.lower() == "true"
                raise ValueError(f"Cannot cast '{v}' to bool")
            return bool(v)
        if fn is str:
            return str(v).lower() if isinstance(v, bool) else str(v)
        return fn(v)
    return one(value)


def _call_function(name: str, args: list, kwargs: dict) -> Any:
    if name in ("int", "float", "str", "bool"):
        return _cast({"int": int, "float": float, "str": str, "bool": bool}[name], args, kwargs)
    if name == "choice":
        if not args:
            raise ValueError("empty choice is not legal")
        if len(args) == 1 and isinstance(args[0], Sweep) and args[0].kind == "choice":
            if not args[0].simple:
                raise ValueError("nesting choices is not supported")
            args[0].simple = False
            return args[0]
        return Sweep("choice", list(args))
    if name == "range":
        start, stop, step = (list(args) + [None, None])[:3]
        start = kwargs.get("start", start)
        stop = kwargs.get("stop", stop)
        step = kwargs.get("step", step if step is not None else 1)
        if stop is None:
            start, stop = 0, start
        return Sweep("range", start=start, stop=stop, step=step)
    if name == "interval":
        start, end = (list(args) + [kwargs.get("start"), kwargs.get("end")])[:2]
        return Sweep("interval", start=float(start), end=float(end))
    if name == "glob":
        include = kwargs.get("include", args[0] if args else None)
        exclude = kwargs.get("exclude", args[1] if len(args) > 1 else None)
        include = [include] if isinstance(include, str) else list(include or [])
        exclude = [] if exclude is None else ([exclude] if isinstance(exclude, str) else list(exclude))
        return Sweep("glob", include=include, exclude=exclude)
    if name == "tag":
        if not args or not isinstance(args[-1], Sweep):
            raise ValueError("Last argument to tag() must be a choice(), range() or interval()")
        args[-1].tags = set(args[:-1])
        return args[-1]
    if name in ("sort", "shuffle"):
        reverse = bool(kwargs.get("reverse", False))
        target = kwargs.get("sweep", kwargs.get("list", args[0] if len(args) == 1 else list(args)))
        if isinstance(target, Sweep):
            if name == "shuffle":
                target.shuffle = True
                return target
            if target.kind == "choice":
                return Sweep("choice", sorted(target.items, reverse=reverse), simple=target.simple)
            values = sorted(target.values(), reverse=reverse)
            return Sweep("choice", values)
        if isinstance(target, list):
            return sorted(target, reverse=reverse) if name == "sort" else target
        return target
    raise ValueError(f"Unknown function '{name}'")


_KEY_RX = re.compile(
    rf"""(?P<prefix>~|\+\+|\+)?
         (?P<key>(?:{_ID}(?:/{_ID})+)|(?:(?:{_KEY_SPECIAL}|{_INT_U})(?:\.(?:{_KEY_SPECIAL}|{_INT_U}))*)|)
         (?:@(?P<pkg>(?:{_KEY_SPECIAL}|{_INT_U})(?:\.(?:{_KEY_SPECIAL}|{_INT_U}))*|))?
         (?P<eq>=[ \t]*)?""", re.X)


def parse_override(line: str) -> Override:
    """Parse one command-line override; a malformed one is a ``ConfigError`` naming it."""
    m = _KEY_RX.match(line)
    prefix = {None: "change", "+": "add", "++": "force_add", "~": "delete"}[m.group("prefix")]
    key = m.group("key")
    if m.group("eq") is None:
        if prefix == "delete" and m.end() == len(line) and key:
            return Override(prefix, key, m.group("pkg"), None, False, line)
        raise ConfigError(
            f"Error parsing override '{line}'\nmissing EQUAL at '{line[m.end():] or '<EOF>'}'\n"
            "An override is key=value (use +key=value to add a key, ~key to delete one).")
    if key == "" and m.group("pkg") is None:
        raise ConfigError(f"Error parsing override '{line}'\nno key before '='.")
    text = line[m.end():]
    if text == "":
        return Override(prefix, key, m.group("pkg"), "", True, line)
    value = _ValueParser(_tokenize_value(text, line), line).parse_value()
    return Override(prefix, key, m.group("pkg"), value, True, line)


def _parse_overrides(overrides: Iterable[str]) -> list[Override]:
    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a list of strings, got the string '{overrides}'")
    return [parse_override(str(o)) for o in overrides]


# ----------------------------------------------------------------------------------------
# The defaults tree (semantics of hydra._internal.defaults_list)
# ----------------------------------------------------------------------------------------

class _Choices:
    """Group choices from the command line and from ``override`` entries, and what was seen."""

    def __init__(self, repo: _Repo, overrides: list[Override]) -> None:
        self.choices: dict[str, Any] = {}
        self.meta: dict[str, dict] = {}
        self.appends: list[_Default] = []
        self.config_overrides: list[Override] = []
        self.deletions: dict[str, dict] = {}
        self.known: dict[str, Optional[str]] = {}
        self.known_per_group: dict[str, set] = {}
        for o in overrides:
            if o.is_sweep:
                continue
            value = o.value()
            if isinstance(value, dict) or not repo.group_exists(o.key):
                self.config_overrides.append(o)
            elif o.kind == "force_add":
                raise ConfigError(
                    f"force-add of config groups is not supported: '{o.line}'\n"
                    f"Use '{o.line[2:]}' to change the choice of '{o.key}' or '{o.line[1:]}' to append it.")
            elif o.kind == "delete":
                if value is not None and not isinstance(value, str):
                    raise ConfigError(f"Config group override deletion value must be a string : {o.line}")
                self.deletions[o.key_element()[1:]] = {"name": value, "used": False}
            elif not isinstance(value, (str, list)):
                raise ConfigError(
                    f"Config group override must be a string or a list. Got {type(value).__name__} "
                    f"in '{o.line}'")
            elif o.kind == "add":
                self.appends.append(_Default(group=o.key, package=o.package, value=value,
                                             external_append=True))
            else:
                key = o.key_element()
                self.choices[key] = value
                self.meta[key] = {"external": True, "containing": None, "used": False}

    def add_override(self, parent_config_path: str, d: _Default) -> None:
        key = d.override_key()
        if key not in self.choices:
            self.choices[key] = d.value
            self.meta[key] = {"external": False, "containing": parent_config_path, "used": False}

    def apply(self, d: _Default) -> None:
        key = d.override_key()
        if d.is_group and key in self.choices:
            d.value = self.choices[key]
            self.meta[key]["used"] = True

    def set_known(self, d: _Default) -> None:
        if not d.is_group:
            return
        key = d.override_key()
        if key not in self.known:
            self.known[key] = d.name()
        elif d.name() != self.known[key]:
            prev = self.known[key]
            raise ConfigError(
                f"Multiple values for {key}. To override a value use 'override {key}: {prev}'"
                f" in a defaults list, or '{key}={d.name()}' (without '+') on the command line.")
        self.known_per_group.setdefault(d.group_path(), set()).add(key)

    def is_deleted(self, d: _Default) -> bool:
        if not d.is_group:
            return False
        deletion = self.deletions.get(d.override_key())
        return deletion is not None and deletion["name"] in (None, d.name())

    def check_all_used(self) -> None:
        for key, meta in self.meta.items():
            if meta["used"]:
                continue
            group = key.split("@")[0]
            seen = sorted(self.known_per_group.get(group, ()))
            if len(seen) > 1:
                msg = f"Could not override '{key}'.\nDid you mean to override one of {', '.join(seen)}?"
            elif len(seen) == 1:
                msg = f"Could not override '{key}'.\nDid you mean to override {seen[0]}?"
            else:
                msg = f"Could not override '{key}'. No match in the defaults list."
            if meta["containing"] is not None:
                msg = f"In '{meta['containing']}': {msg}"
                msg += ("\nAn 'override' entry may only change a group listed before it: put "
                        f"'{group}' earlier in the defaults list than the config that overrides it.")
            if meta["external"]:
                value = self.choices[key]
                shown = value if isinstance(value, str) else _value_to_str(value)
                msg += f"\nTo append to your default list use +{key}={shown}"
            raise ConfigError(msg)
        for key, deletion in self.deletions.items():
            if not deletion["used"]:
                desc = key if deletion["name"] is None else f"{key}={deletion['name']}"
                raise ConfigError(f"Could not delete '{desc}'. No match in the defaults list")


class _Node:
    """A defaults-tree node: an element and, when it has a defaults list, its children."""

    __slots__ = ("d", "children", "parent")

    def __init__(self, d: _Default, parent: Optional["_Node"] = None) -> None:
        self.d = d
        self.children: Optional[list] = None  # of _Node | _Default
        self.parent = parent


class _TreeBuilder:
    def __init__(self, repo: _Repo, choices: _Choices, skip_missing: bool) -> None:
        self.repo = repo
        self.choices = choices
        self.skip_missing = skip_missing

    def not_found(self, node: _Node) -> ConfigError:
        d = node.d
        if d.primary:
            return ConfigError(
                f"Cannot find primary config '{d.config_path()}'. Check that it's in your config "
                f"directory '{self.repo.root}' (file '{d.config_path()}.yaml').")
        if d.is_group:
            group = d.group_path()
            msg = f"Could not find '{d.config_path()}'\n"
            options = self.repo.nested_options(group)
            if options:
                close = _nearest(d.config_path()[len(group) + 1:], options, prefix=f"{group}=")
                if close:
                    msg += f"\nDid you mean {close}?\n"
                msg += f"\nAvailable options in '{group}':\n" + "\n".join("\t" + o for o in options)
            else:
                msg += f"\nThe group '{group}' has no options in '{self.repo.root}'."
        else:
            msg = f"Could not load '{d.config_path()}'."
        if node.parent is not None:
            msg = f"In '{node.parent.d.config_path()}': {msg}"
        return ConfigError(msg)

    def build(self, node: _Node, is_root: bool, interpolated: bool) -> _Node:
        parent = node.d
        if is_root:
            parent.update_parent("", "")
            if not self.repo.config_exists(parent.config_path()):
                raise self.not_found(node)
        if not parent.is_missing():
            loaded = self.repo.load(parent.config_path())
            if loaded is not None:
                parent.set_package_header(loaded.header)
        if self.choices.is_deleted(parent):
            parent.deleted = True
            self.choices.deletions[parent.override_key()]["used"] = True
            return node
        self.choices.set_known(parent)
        if parent.name() is None:
            return node
        if parent.is_missing():
            if self.skip_missing:
                return node
            if parent.is_group:
                key = parent.override_key()
                options = "\n".join("\t" + o for o in self.repo.group_options(parent.group_path()))
                raise ConfigError(f"You must specify '{key}', e.g, {key}=<OPTION>\nAvailable options:\n{options}")
            raise ConfigError(f"Missing ConfigDefault is not supported : {parent.config_path()}")

        path = parent.config_path()
        loaded = self.repo.load(path)
        if loaded is None:
            if parent.optional:
                parent.deleted = True
                return node
            raise self.not_found(node)

        entries = _parse_defaults_entries(path, loaded.defaults)
        self_added = False
        if entries or (is_root and self.choices.appends):
            self_added = self._validate_self(parent, entries)
        if is_root:
            entries.extend(self.choices.appends)
        self._register_overrides(entries, parent, interpolated)

        children: list = []
        for d in reversed(entries):
            if d.is_self():
                d.update_parent(parent.parent_base_dir, parent.own_package())
                children.append(d)
                continue
            if d.override:
                continue
            d.update_parent(parent.group_path(), parent.final_package())
            self.choices.apply(d)
            if d.is_group and isinstance(d.value, list):
                for item in reversed(d.value):
                    if "${" in item:
                        raise ConfigError(
                            f"In '{path}': Defaults List interpolation is not supported in options list items")
                    child = _Default(path=d.group + "/" + item, package=d.package, optional=d.optional)
                    child.update_parent(parent.group_path(), parent.final_package())
                    self._add_child(children, _Node(child, node), interpolated)
            elif d.is_interpolation():
                children.append(d)
            else:
                self._add_child(children, _Node(d, node), interpolated)

        for idx, d in enumerate(children):
            if isinstance(d, _Default) and d.is_interpolation():
                self._resolve_default_interpolation(d, entries, self_added)
                d.update_parent(parent.group_path(), parent.final_package())
                sub = self.build(_Node(d, node), is_root=False, interpolated=True)
                if sub.children is not None:
                    children[idx] = sub
        if children:
            node.children = list(reversed(children))
        return node

    def _add_child(self, children: list, child: _Node, interpolated: bool) -> None:
        sub = self.build(child, is_root=False, interpolated=interpolated)
        children.append(child.d if sub.children is None else sub)

    @staticmethod
    def _validate_self(parent: _Default, entries: list[_Default]) -> bool:
        has_self = has_non_override = False
        for d in entries:
            if not d.override:
                has_non_override = True
            if d.is_self():
                if has_self:
                    raise ConfigError(f"Duplicate _self_ defined in {parent.config_path()}")
                has_self = True
        if (not has_self and has_non_override) or not entries:
            entries.append(_Default(path="_self_"))
        return not has_self

    def _register_overrides(self, entries: list[_Default], parent: _Default, interpolated: bool) -> None:
        last_override = None
        for d in entries:
            if d.is_self():
                continue
            d.update_parent(parent.group_path(), parent.final_package())
            if last_override is not None and not (d.override or d.external_append):
                raise ConfigError(
                    f"In {parent.config_path()}: Override '{last_override.override_key()} : "
                    f"{last_override.name()}' is defined before '{d.describe() if d.is_group else d.config_path()}'.\n"
                    "Overrides must be at the end of the defaults list")
            if d.is_group and d.override:
                last_override = d
                if interpolated:
                    raise ConfigError(
                        f"{parent.config_path()}: Default List Overrides are not allowed in the subtree\n"
                        f"of an in interpolated config group (override {d.override_key()}={d.name()}).")
                self.choices.add_override(parent.config_path(), d)

    def _resolve_default_interpolation(self, d: _Default, entries: list[_Default], self_added: bool) -> None:
        known = self.choices.known
        text = d.value if d.is_group else d.config_path()

        def sub(m: re.Match) -> str:
            key = m.group(1).strip()
            if key in known and known[key] is not None:
                return str(known[key])
            options = ", ".join(k for k in known)
            hint = f", possible interpolation keys: {options}" if options else ""
            raise ConfigError(f"Error resolving interpolation '{text}'{hint}")
        resolved = re.sub(r"\$\{([^}]*)\}", sub, text)
        if d.is_group:
            d.value = resolved
        else:
            d.path = resolved
            d.parent_base_dir = None


def _tree_to_list(tree: _Node) -> list[dict]:
    out: list[dict] = []

    def emit(owner: Optional[_Node], d: _Default) -> None:
        if d.deleted or d.is_missing() or d.name() is None:
            return
        if d.is_self():
            parent = owner.parent.d.config_path() if owner.parent is not None else None
            out.append({"config_path": owner.d.config_path(), "package": owner.d.final_package(),
                        "is_self": True, "parent": parent, "primary": owner.d.primary,
                        "override_key": None})
        else:
            out.append({"config_path": d.config_path(), "package": d.final_package(), "is_self": False,
                        "parent": owner.d.config_path() if owner is not None else None,
                        "primary": d.primary, "override_key": d.override_key() if d.is_group else None})

    def walk(node: _Node) -> None:
        if not node.children:
            emit(node.parent, node.d)
            return
        for child in node.children:
            if isinstance(child, _Default):
                emit(node, child)
            else:
                walk(child)
    walk(tree)
    seen = set()
    for item in out:
        key = item["override_key"]
        if key is not None:
            if key in seen:
                raise ConfigError(f"{key} appears more than once in the final defaults list")
            seen.add(key)
    return out


def _build_defaults(repo: _Repo, config_name: str, overrides: list[Override], skip_missing: bool):
    choices = _Choices(repo, overrides)
    primary = _Default(path=config_name, primary=True)
    tree = _TreeBuilder(repo, choices, skip_missing).build(_Node(primary), is_root=True, interpolated=False)
    result = _tree_to_list(tree)
    choices.check_all_used()
    return result, choices


# ----------------------------------------------------------------------------------------
# Merging (OmegaConf merge rules on plain trees)
# ----------------------------------------------------------------------------------------

def _merge(dest: dict, src: dict, where: str = "") -> None:
    """Merge ``src`` into ``dest`` in place: dicts recursively, lists and scalars replace.

    ``"???"`` in ``src`` never overwrites an existing value; ``src`` is never aliased."""
    for key, value in src.items():
        if key in dest:
            current = dest[key]
            if isinstance(value, dict) and isinstance(current, dict):
                _merge(current, value, f"{where}{key}.")
                continue
            if isinstance(value, str) and value == MISSING:
                continue
            if isinstance(current, (dict, list)) and isinstance(value, (dict, list)) \
                    and type(current) is not type(value):
                kinds = {dict: "a mapping", list: "a list"}
                raise ConfigError(f"Cannot merge {kinds[type(value)]} into {kinds[type(current)]} "
                                  f"at '{where}{key}'.")
        dest[key] = _plain(value)


def _embed(body: Optional[dict], package: str) -> dict:
    if body is None:
        body = {}
    if package == "":
        return body
    node: Any = body
    for part in reversed(package.split(".")):
        node = {part: node}
    return node


# ----------------------------------------------------------------------------------------
# Applying command-line value overrides (OmegaConf.update in struct mode)
# ----------------------------------------------------------------------------------------

def _split_key(key: str) -> list[str]:
    return key.split(".")


def _lookup(cfg: Any, key: str) -> tuple[bool, Any]:
    node = cfg
    for part in _split_key(key):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


def _apply_value_override(cfg: dict, o: Override, resolve_fn) -> None:
    if o.package is not None:
        raise ConfigError(
            f"Override {o.line} looks like a config group override, but config group '{o.key}' does not exist.")
    key, value = o.key, o.value()
    found, current = _lookup(cfg, key)
    if o.kind == "delete":
        current_value = resolve_fn(key) if found else None
        if not found or current_value is None or current_value == MISSING:
            raise ConfigError(f"Could not delete from config. '{key}' does not exist.")
        if value is not None and value != current_value:  # as Hydra: `~a=null` deletes any value
            raise ConfigError(
                f"Could not delete from config. The value of '{key}' is {current_value} and not {value}.")
        parent_key, _, last = key.rpartition(".")
        container = _lookup(cfg, parent_key)[1] if parent_key else cfg
        del container[int(last) if isinstance(container, list) else last]
        return
    if o.kind == "add":
        current_value = resolve_fn(key) if found else None
        if found and current_value is not None and current_value != MISSING \
                and not isinstance(value, (dict, list)):
            raise ConfigError(
                f"Could not append to config. An item is already at '{key}'.\n"
                f"Either remove + prefix: '{o.line[1:]}'\n"
                f"Or add a second + to add or override '{key}': '+{o.line}'")
    _update(cfg, key, value, force_add=o.kind in ("add", "force_add"), line=o.line)


def _update(cfg: dict, key: str, value: Any, force_add: bool, line: str) -> None:
    parts = _split_key(key)

    def refuse(siblings: Any = None, part: str = "") -> ConfigError:
        hint = ""
        if isinstance(siblings, dict):
            prefix = ".".join(parts[:parts.index(part)]) if part in parts else ""
            close = _nearest(part, [str(k) for k in siblings], prefix=prefix + "." if prefix else "")
            if close:
                hint = f"\nDid you mean {close}?"
        return ConfigError(f"Could not override '{key}'.{hint}\nTo append to your config use +{line}")

    node: Any = cfg
    for part in parts[:-1]:
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"Error merging override {line}\nlist index '{part}' out of range")
            idx = int(part)
            if not isinstance(node[idx], (dict, list)):
                node[idx] = {}
            node = node[idx]
            continue
        if part not in node:
            if not force_add:
                raise refuse(node, part)
            node[part] = {}
        elif not isinstance(node[part], (dict, list)):
            node[part] = {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"Error merging override {line}\nlist index '{last}' out of range")
        node[int(last)] = _plain(value)
        return
    if last not in node and not force_add:
        raise refuse(node, last)
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        if not force_add:
            new = [k for k in _new_keys(node[last], value)]
            if new:
                raise refuse()
        _merge(node[last], value)
        return
    node[last] = _plain(value)


def _new_keys(dest: dict, src: dict, prefix: str = "") -> Iterable[str]:
    for k, v in src.items():
        if k not in dest:
            yield prefix + str(k)
        elif isinstance(v, dict) and isinstance(dest[k], dict):
            yield from _new_keys(dest[k], v, f"{prefix}{k}.")


# ----------------------------------------------------------------------------------------
# Interpolation (OmegaConf 2.3 semantics on plain trees)
# ----------------------------------------------------------------------------------------

_RESOLVER_CALL = re.compile(r"^\s*([A-Za-z_][\w\-]*(?:\.[A-Za-z_][\w\-]*)*)\s*:(.*)$", re.S)
_FULL = {name: re.compile(rx.pattern + r"\Z") for name, rx in _VALUE_TOKENS
         if name in ("FLOAT", "INT", "BOOL", "NULL")}


def _split_interpolations(text: str) -> list[tuple[str, str]]:
    """``"a${b}c"`` -> ``[("text","a"), ("interp","b"), ("text","c")]``; ``\\${`` is literal."""
    parts: list[tuple[str, str]] = []
    buf, i, n = [], 0, len(text)
    while i < n:
        if text.startswith("\\${", i):
            buf.append("${")
            i += 3
        elif text.startswith("\\\\${", i):
            buf.append("\\")
            i += 2
        elif text.startswith("${", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("${", j):
                    depth += 1
                    j += 2
                    continue
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                j += 1
            if depth:
                raise ConfigError(f"unterminated interpolation in '{text}' (a '}}' is missing)")
            if buf:
                parts.append(("text", "".join(buf)))
                buf = []
            parts.append(("interp", text[i + 2:j - 1]))
            i = j
        else:
            buf.append(text[i])
            i += 1
    if buf:
        parts.append(("text", "".join(buf)))
    return parts


def _split_args(text: str) -> list[str]:
    """Split resolver arguments on top-level commas (outside quotes, brackets, ``${}``)."""
    args, buf, depth, quote, i = [], [], 0, None, 0
    while i < len(text):
        ch = text[i]
        if quote:
            buf.append(ch)
            if ch == "\\" and i + 1 < len(text):
                buf.append(text[i + 1])
                i += 1
            elif ch == quote:
                quote = None
        elif ch == "\\" and i + 1 < len(text):
            buf.append(text[i:i + 2])
            i += 1
        elif ch in "'\"":
            quote = ch
            buf.append(ch)
        elif ch in "{[(":
            depth += 1
            buf.append(ch)
        elif ch in "}])":
            depth -= 1
            buf.append(ch)
        elif ch == "," and depth == 0:
            args.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    args.append("".join(buf))
    return args


class _Resolver:
    """Resolves interpolations against the whole tree (job config + ``hydra`` node)."""

    def __init__(self, root: dict, now: _dt.datetime) -> None:
        self.root = root
        self.now = now
        self.cache: dict[tuple, Any] = {}
        self.active: list[tuple] = []

    @staticmethod
    def _full_key(path: tuple) -> str:
        out = ""
        for p in path:
            out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
        return out

    def node_at(self, path: tuple) -> Any:
        node: Any = self.root
        for p in path:
            node = node[p]
        return node

    def select(self, path: tuple, origin: tuple) -> tuple:
        """Walk ``path`` from the root, resolving interpolated containers on the way."""
        node: Any = self.root
        walked: tuple = ()
        for p in path:
            if isinstance(node, str) and "${" in node:
                node = self.resolve_path(walked)
            if isinstance(node, dict) and p in node:
                node = node[p]
            elif isinstance(node, list) and isinstance(p, str) and p.lstrip("-").isdigit() \
                    and -len(node) <= int(p) < len(node):
                p = int(p) % len(node)
                node = node[p]
            else:
                raise ConfigError(f"Interpolation key '{self._full_key(path)}' not found\n"
                                  f"    full_key: {self._full_key(origin)}")
            walked += (p,)
        return walked

    def resolve_path(self, path: tuple) -> Any:
        if path in self.cache:
            return self.cache[path]
        if path in self.active:
            raise ConfigError(f"Recursive interpolation detected\n    full_key: {self._full_key(path)}\n"
                              "Fix the cycle: " + " -> ".join(self._full_key(p) for p in self.active + [path]))
        self.active.append(path)
        try:
            value = self.resolve_value(self.node_at(path), path)
        finally:
            self.active.pop()
        self.cache[path] = value
        return value

    def resolve_value(self, value: Any, path: tuple) -> Any:
        if isinstance(value, dict):
            return {k: self.resolve_path(path + (k,)) for k in value}
        if isinstance(value, list):
            return [self.resolve_path(path + (i,)) for i in range(len(value))]
        if isinstance(value, str) and "${" in value:
            return self.resolve_string(value, path)
        return value

    def resolve_string(self, text: str, path: tuple) -> Any:
        parts = _split_interpolations(text)
        if len(parts) == 1 and parts[0][0] == "interp":
            return self.interpolate(parts[0][1], path)
        out = []
        for kind, part in parts:
            if kind == "text":
                out.append(part)
            else:
                value = self.interpolate(part, path)
                out.append(str(value))
        return "".join(out)

    def _target(self, value: Any, target: tuple, path: tuple) -> Any:
        if isinstance(value, str) and value == MISSING:
            raise ConfigError(f"Interpolation to a missing value: '{self._full_key(target)}' is '???'\n"
                              f"    full_key: {self._full_key(path)}\n"
                              f"Set '{self._full_key(target)}' in a config or on the command line.")
        return _plain(value)

    def interpolate(self, inner: str, path: tuple) -> Any:
        call = _RESOLVER_CALL.match(inner)
        if call:
            return self.call_resolver(call.group(1), call.group(2), path)
        key = inner.strip()
        if "${" in key:
            key = str(self.resolve_string(key, path))
        dots = len(key) - len(key.lstrip("."))
        if dots:
            base = path[:len(path) - dots]
            if dots > len(path):
                raise ConfigError(f"Interpolation key '{key}' goes above the root\n"
                                  f"    full_key: {self._full_key(path)}")
            rest = key[dots:]
        else:
            base, rest = (), key
        parts = tuple(p for p in re.split(r"\.|\[|\]", rest) if p != "") if rest else ()
        target = self.select(base + parts, path)
        return self._target(self.resolve_path(target), target, path)

    def _arg(self, raw: str, path: tuple) -> Any:
        text = raw.strip(" \t")
        if len(text) >= 2 and text[0] in "'\"" and text[-1] == text[0]:
            body = re.sub(r"\\(.)", r"\1", text[1:-1])
            return self.resolve_string(body, path) if "${" in body else body
        if "${" in text:
            return self.resolve_string(text, path)
        for kind, rx in _FULL.items():
            if rx.match(text):
                if kind == "NULL":
                    return None
                if kind == "BOOL":
                    return text.lower() == "true"
                return int(text) if kind == "INT" else float(text)
        return re.sub(r"\\([\\()\[\]{}:=, \t])", r"\1", text)

    def call_resolver(self, name: str, args_text: str, path: tuple) -> Any:
        args = [self._arg(a, path) for a in _split_args(args_text)] if args_text.strip() != "" else []
        where = f"\n    full_key: {self._full_key(path)}"
        if name == "oc.env":
            if not args or len(args) > 2:
                raise ConfigError(f"oc.env takes a variable name and an optional default{where}")
            var = str(args[0])
            if var in os.environ:
                return os.environ[var]
            if len(args) == 2:
                return None if args[1] is None else str(args[1])
            raise ConfigError(
                f"Environment variable '{var}' not found{where}\n"
                f"Set it (export {var}=...) or give a default: ${{oc.env:{var},<default>}}")
        if name == "now":
            return self.now.strftime(str(args[0]) if args else "")
        if name == "hydra":  # OmegaConf.select semantics: absent or '???' gives None
            key = str(args[0]) if args else ""
            try:
                target = self.select(("hydra",) + tuple(key.split(".")), path)
            except ConfigError:
                return None
            value = self.resolve_path(target)
            return None if isinstance(value, str) and value == MISSING else _plain(value)
        if name == "oc.select":
            key = str(args[0])
            try:
                return self.interpolate(key, path)
            except ConfigError:
                return args[1] if len(args) > 1 else None
        if name == "oc.decode":
            if args[0] is None:
                return None
            text = str(args[0])
            return _unquote(_ValueParser(_tokenize_value(text, text), text).element()) if text else ""
        raise ConfigError(f"Unsupported interpolation type {name}{where}\n"
                          "Known resolvers: oc.env, oc.select, oc.decode, now, hydra.")


# Fields of Hydra's structured HydraConf that are typed str: their resolved values are strings.
_HYDRA_STR_FIELDS = (("run", "dir"), ("sweep", "dir"), ("sweep", "subdir"), ("output_subdir",),
                     ("job", "name"), ("job", "id"), ("job", "override_dirname"), ("runtime", "output_dir"))


def _resolve_hydra(resolver: _Resolver, node: Any) -> Any:
    out = _resolve_lenient(resolver, node, ("hydra",))
    for field in _HYDRA_STR_FIELDS:
        parent = out
        for part in field[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and parent.get(field[-1]) is not None \
                and not isinstance(parent[field[-1]], str):
            parent[field[-1]] = str(parent[field[-1]])
    return out


def _resolve_lenient(resolver: _Resolver, value: Any, path: tuple) -> Any:
    """Resolve what can be resolved; leave an unresolvable leaf as its raw string."""
    if isinstance(value, dict):
        return {k: _resolve_lenient(resolver, v, path + (k,)) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_lenient(resolver, v, path + (i,)) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:
        try:
            return resolver.resolve_path(path)
        except ConfigError:
            return value
    return value


# ----------------------------------------------------------------------------------------
# compose
# ----------------------------------------------------------------------------------------

def _hydra_defaults() -> dict:
    """The runtime node Hydra 1.3 puts under ``hydra`` before any user config is merged."""
    return {
        "run": {"dir": "outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}"},
        "sweep": {"dir": "multirun/${now:%Y-%m-%d}/${now:%H-%M-%S}", "subdir": "${hydra.job.num}"},
        "sweeper": {"max_batch_size": None, "params": None},
        "help": {"app_name": "${hydra.job.name}"},
        "hydra_logging": {"version": 1, "root": {"level": "INFO"}},
        "job_logging": {"version": 1, "root": {"level": "INFO"}},
        "mode": None,
        "searchpath": [],
        "callbacks": {},
        "output_subdir": ".hydra",
        "overrides": {"hydra": [], "task": []},
        "job": {
            "name": MISSING, "chdir": None, "override_dirname": MISSING, "id": MISSING,
            "num": MISSING, "config_name": None, "env_set": {}, "env_copy": [],
            "config": {"override_dirname": {"kv_sep": "=", "item_sep": ",", "exclude_keys": []}},
        },
        "runtime": {"version": "1.3.2", "version_base": "1.3", "cwd": MISSING, "config_sources": [],
                    "output_dir": MISSING, "choices": {}},
        "verbose": False,
    }


def _check_sweeps(parsed: list[Override], multirun: bool) -> None:
    for o in parsed:
        if not o.is_sweep:
            continue
        if multirun:
            if o.is_hydra:
                raise ConfigError(f"Sweeping over Hydra's configuration is not supported : '{o.line}'")
        elif o.value_raw.simple:
            raise ConfigError(
                f"Ambiguous value for argument '{o.line}'\n"
                "1. To use it as a list, use key=[value1,value2]\n"
                "2. To use it as string, quote the value: key=\\'value1,value2\\'\n"
                "3. To sweep over it, add --multirun to your command line")
        else:
            raise ConfigError(f"Sweep parameters '{o.line}' requires --multirun")


def _config_name(config_name: str) -> str:
    return config_name[:-5] if config_name.endswith(".yaml") else config_name


def _compose_tree(config_dir: str, config_name: str, overrides: Iterable[str], mode: str,
                  job_num: Optional[int], job_name: Optional[str], now: _dt.datetime,
                  sources: Optional[dict] = None) -> dict:
    if mode not in ("RUN", "MULTIRUN"):
        raise ConfigError(f"mode must be 'RUN' or 'MULTIRUN', got '{mode}'")
    repo = _Repo(config_dir)
    name = _config_name(config_name)
    parsed = _parse_overrides(overrides)
    _check_sweeps(parsed, multirun=mode == "MULTIRUN")
    defaults, choices = _build_defaults(repo, name, parsed, skip_missing=mode == "MULTIRUN")

    cfg: dict = {"hydra": _hydra_defaults()}
    for item in defaults:
        loaded = repo.load(item["config_path"])
        embedded = _embed(loaded.body, item["package"])
        try:
            _merge(cfg, embedded)
        except ConfigError as e:
            raise ConfigError(f"In '{item['config_path']}': {e}") from None
        if sources is not None:
            _record_sources(sources, embedded, "", _shown_file(repo.root, item["config_path"]))

    for o in choices.config_overrides:
        def current(key: str) -> Any:
            return _Resolver(cfg, now).resolve_path(_Resolver(cfg, now).select(tuple(key.split(".")), ()))
        try:
            _apply_value_override(cfg, o, current)
        except ConfigError as e:
            if str(e).startswith(("Could not", "Override ", "Error merging")):
                raise
            raise ConfigError(f"Error merging override {o.line}\n{e}") from None
        if sources is not None:
            for key in [k for k in sources if k == o.key or k.startswith(o.key + ".")]:
                del sources[key]
            if o.kind != "delete":
                sources[o.key] = f"the override {o.line}"

    hydra = cfg.setdefault("hydra", {})
    if not isinstance(hydra, dict):
        raise ConfigError("'hydra' must be a mapping of Hydra runtime settings")
    task = [o for o in parsed if not o.is_hydra]
    overrides_node = hydra.setdefault("overrides", {})
    overrides_node["hydra"] = [o.line for o in parsed if o.is_hydra]
    overrides_node["task"] = [o.line for o in task]
    job = hydra.setdefault("job", {})
    runtime = hydra.setdefault("runtime", {})
    runtime["choices"] = dict(choices.known)
    runtime["cwd"] = os.getcwd()
    configured_mode = hydra.get("mode")
    if mode == "MULTIRUN" or configured_mode is None:
        hydra["mode"] = mode
    hydra.setdefault("runtime", {})["configured_mode"] = configured_mode
    if job_num is not None:
        job["num"] = job_num
    if job.get("name") in (None, MISSING):
        job["name"] = job_name or name.rsplit("/", 1)[-1]
    job["config_name"] = name
    dirname_cfg = (job.get("config") or {}).get("override_dirname") or {}
    exclude = set(dirname_cfg.get("exclude_keys") or [])
    lines = sorted(o.line for o in task if o.key not in exclude)
    job["override_dirname"] = re.sub("=", str(dirname_cfg.get("kv_sep", "=")),
                                     str(dirname_cfg.get("item_sep", ",")).join(lines))
    if runtime.get("output_dir") in (None, MISSING):
        runtime["output_dir"] = _output_dir(cfg, mode, job_num, now)
    return cfg


def _shown_file(root: str, config_path: str) -> str:
    """A config file as a user would name it: relative to the working directory when inside it."""
    path = os.path.join(root, config_path + ".yaml")
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _record_sources(sources: dict, tree: Any, prefix: str, source: str) -> None:
    """``sources[dotted key] = source`` for every value ``tree`` sets (leaves; a ``???`` sets nothing).
    A mapping merges into what is there; any other value replaces the keys below it."""
    for key, value in tree.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            _record_sources(sources, value, full, source)
        elif not (isinstance(value, str) and value == MISSING):
            for old in [k for k in sources if k.startswith(full + ".")]:
                del sources[old]
            sources[full] = source


_WHOLE_INTERPOLATION = re.compile(r"^\$\{([A-Za-z0-9_.\[\]]+)\}$")


def value_source(config_dir: str, config_name: str, overrides: Iterable[str], key: str, *,
                 mode: str = "RUN", job_num: Optional[int] = None) -> Optional[str]:
    """Where the value of dotted ``key`` was set: the config file or command-line override, and for a
    value that is a whole interpolation (``${modality.num_classes}``) also where that key is set.
    None when ``key`` is not in the composed config."""
    sources: dict = {}
    try:
        cfg = _compose_tree(config_dir, config_name, overrides, mode, job_num, None, _dt.datetime.now(), sources)
    except ConfigError:
        return None

    def source_of(dotted: str) -> Optional[str]:
        parts = dotted.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in sources:
                return sources[".".join(parts[:n])]
        return None

    where = source_of(key)
    found, raw = _lookup(cfg, key)
    match = _WHOLE_INTERPOLATION.match(raw) if found and isinstance(raw, str) else None
    if where and match and not match.group(1).startswith("."):
        inner = source_of(match.group(1))
        if inner:
            where += f", as ${{{match.group(1)}}}, which {inner} sets"
    return where


def _output_dir(cfg: dict, mode: str, job_num: Optional[int], now: _dt.datetime) -> str:
    """``hydra.run.dir`` (or ``sweep.dir/subdir`` for a sweep job) as an absolute path, if resolvable."""
    resolver = _Resolver(cfg, now)
    try:
        if mode == "RUN":
            return os.path.abspath(str(resolver.resolve_path(("hydra", "run", "dir"))))
        if job_num is not None:
            return os.path.abspath(os.path.join(str(resolver.resolve_path(("hydra", "sweep", "dir"))),
                                                str(resolver.resolve_path(("hydra", "sweep", "subdir")))))
    except ConfigError:
        pass
    return MISSING


def compose(config_dir: str, config_name: str, overrides: Iterable[str] = (), *,
            mode: str = "RUN", job_num: Optional[int] = None, job_name: Optional[str] = None,
            now: Optional[_dt.datetime] = None, resolve: bool = True) -> Config:
    """Compose ``config_name`` from ``config_dir`` with ``overrides``, as Hydra 1.3 does.

    Returns the merged config with every interpolation resolved (``"???"`` values stay as
    the string ``"???"``) and Hydra's runtime settings under ``hydra``. ``mode="MULTIRUN"``
    composes one job of a sweep (``job_num``); sweep overrides are then allowed and skipped.
    ``now`` fixes the time that ``${now:...}`` formats (one timestamp per run).
    ``resolve=False`` returns the tree with interpolations left as strings.
    """
    now = now or _dt.datetime.now()
    cfg = _compose_tree(config_dir, config_name, overrides, mode, job_num, job_name, now)
    if not resolve:
        return Config(cfg)
    resolver = _Resolver(cfg, now)
    out = {}
    for key in cfg:
        if key == "hydra":
            continue
        out[key] = resolver.resolve_path((key,))
    return Config({"hydra": _resolve_hydra(resolver, cfg["hydra"]), **out})


def resolve(cfg: dict, now: Optional[_dt.datetime] = None, strict: bool = True) -> Config:
    """Resolve the interpolations of an unresolved ``compose(..., resolve=False)`` result.

    ``strict=False`` leaves values that cannot be resolved yet as their raw strings (as is
    always done for the ``hydra`` node)."""
    resolver = _Resolver(_plain(cfg), now or _dt.datetime.now())
    out = {}
    if "hydra" in cfg:
        out["hydra"] = _resolve_hydra(resolver, resolver.root["hydra"])
    for key in cfg:
        if key != "hydra":
            out[key] = resolver.resolve_path((key,)) if strict else \
                _resolve_lenient(resolver, resolver.root[key], (key,))
    return Config(out)


def resolve_key(cfg: dict, key: str, now: Optional[_dt.datetime] = None) -> Any:
    """The resolved value of dotted ``key`` of an unresolved tree; a ``ConfigError`` naming what does
    not resolve (an unknown key, a missing environment variable)."""
    resolver = _Resolver(_plain(cfg), now or _dt.datetime.now())
    return resolver.resolve_path(tuple(key.split(".")))


def defaults_list(config_dir: str, config_name: str, overrides: Iterable[str] = ()) -> list[dict]:
    """The final defaults list in merge order: ``{"config_path", "package", "is_self", "parent"}``."""
    repo = _Repo(config_dir)
    parsed = _parse_overrides(overrides)
    _check_sweeps(parsed, multirun=False)
    result, _ = _build_defaults(repo, _config_name(config_name), parsed, skip_missing=False)
    return [{k: item[k] for k in ("config_path", "package", "is_self", "parent")} for item in result]


# ----------------------------------------------------------------------------------------
# Multirun expansion (BasicSweeper order: cartesian product, first key slowest)
# ----------------------------------------------------------------------------------------

def is_sweep_override(line: str) -> bool:
    return parse_override(line).is_sweep


def expand_sweeps(overrides: Iterable[str], config_dir: Optional[str] = None) -> list[list[str]]:
    """Expand sweep overrides into one override list per job, in Hydra's job order.

    A later value for the same key replaces an earlier one but keeps its position (so a
    command-line value beats ``hydra.sweeper.params`` listed first). ``glob()`` needs
    ``config_dir`` to list the options of its config group."""
    per_key: dict[str, list[str]] = {}
    for o in _parse_overrides(overrides):
        key = o.key_element()
        if o.is_sweep:
            sweep = o.value_raw
            if sweep.kind == "interval":
                raise ConfigError(
                    f"BasicSweeper does not support sweep type : INTERVAL_SWEEP ('{o.line}'): "
                    "interval() is only for hparams_search.")
            options = None
            if sweep.kind == "glob":
                if config_dir is None:
                    raise ConfigError(f"glob() in '{o.line}' needs the config directory to list options")
                options = _Repo(config_dir).group_options(o.key)
            per_key[key] = [f"{key}={_value_to_str(v)}" for v in sweep.values(options)]
        else:
            per_key[key] = [f"{key}={o.value_str()}"]
    return [list(job) for job in itertools.product(*per_key.values())]


# ----------------------------------------------------------------------------------------
# instantiate
# ----------------------------------------------------------------------------------------

def locate(path: str) -> Any:
    """The object a dotted path names (``models.objectives.MAEPretraining``); ``ConfigError`` if none."""
    return _locate(path)


def _locate(path: str) -> Any:
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for name in parts[i:]:
                obj = getattr(obj, name)
            return obj
        except AttributeError:
            break
    raise ConfigError(f"Error locating target '{path}': no importable module provides it. "
                      "Check the spelling of _target_ (a dotted path such as 'models.mae.MaskedAutoencoder').")


def instantiate(node: Any, *args: Any, **kwargs: Any) -> Any:
    """Build the object a config node describes.

    ``_target_`` is the dotted path of a callable; the other keys are its keyword arguments
    (``kwargs`` override them); ``_args_`` gives positional arguments; ``_partial_: true``
    returns a ``functools.partial``; nested nodes with ``_target_`` are built first unless
    ``_recursive_: false``. A node without ``_target_`` is returned as data (a ``Config`` stays a
    ``Config`` with its path, so a missing key read from it later is named in full). Arguments
    that do not fit the target's signature (a key it does not take, a required one the node
    lacks) are a ``ConfigError`` naming the node and the keys."""
    import functools
    import inspect

    if isinstance(node, list):
        return [instantiate(v) for v in node]
    if not isinstance(node, dict):
        return node
    where = config_path(node)
    node = dict(node)
    node.update(kwargs)
    if "_target_" not in node:
        built = {k: instantiate(v) for k, v in node.items()}
        return Config(built, _node_path=where) if where else built
    target = node.pop("_target_")
    recursive = node.pop("_recursive_", True)
    partial = node.pop("_partial_", False)
    node.pop("_convert_", None)
    pos = list(args) + list(node.pop("_args_", []))
    fn = _locate(target) if isinstance(target, str) else target
    if recursive:
        pos = [instantiate(v) for v in pos]
        node = {k: instantiate(v) for k, v in node.items()}
    if partial:
        return functools.partial(fn, *pos, **node)
    try:
        inspect.signature(fn).bind(*pos, **node)
    except TypeError as e:
        node_name = f"config node '{where}'" if where else "config node"
        raise ConfigError(f"Error instantiating '{target}': the {node_name} does not fit its arguments: {e}. "
                          "Fix the node's keys (a misspelt, extra or missing key).") from None
    except ValueError:  # no signature (some builtins): let the call decide
        try:
            return fn(*pos, **node)
        except TypeError as e:
            raise ConfigError(f"Error instantiating '{target}': {e}") from None
    return fn(*pos, **node)  # a TypeError raised inside the target is a bug: keep its traceback
