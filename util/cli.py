"""The command line shared by ``main_pretrain.py``, ``main_finetune.py`` and ``main_artifacts.py``.

    python main_X.py [--config PATH] [-m] [--cfg job|hydra|all] [--resolve]
                     [--info defaults] [--job-index N] [key=value ...]

One run: compose the config, create the run directory (``hydra.run.dir``) with
``.hydra/{config,hydra,overrides}.yaml`` and a log file, seed, call ``main(cfg)``.
A sweep (``-m`` or ``hydra.mode: MULTIRUN``): one numbered job directory under
``hydra.sweep.dir`` per job, jobs one after another, and ``summary.json`` listing each
job's overrides, directory, status and the metrics dict its ``main`` returned.
``--job-index N`` runs only job N of the sweep (one SLURM array task per job).
Bad input exits with code 2 and one message on stderr; ``HYDRA_FULL_ERROR=1`` shows the traceback.
``--help`` also lists the config groups, their options and the primary's defaults list (``config_help``).
"""
from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import logging
import os
import re
import socket
import sys
from typing import Any, Callable, Optional

from util import distributed
from util.config import (Config, compose, defaults_list, resolve, resolve_key, to_yaml,
                         value_source)
from util.errors import ConfigError, NonFiniteLossError, Preempted
from util.files import atomic_write_text, describe_os_error
from util.preemption import EXIT_INTERRUPTED
from util.schema import AnyOf, Bool, Choice, SchemaError
from util.seeding import seed_everything

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO_ROOT, "configs")
EXIT_USAGE = 2

log = logging.getLogger("cli")

MainFn = Callable[[Config], Optional[dict]]


class _ConfigHelpAction(argparse.Action):
    """``-h/--help``: argparse's flags, then the config groups and the primary's defaults (``config_help``)
    of ``configs/`` or, when ``--config PATH`` came before ``--help``, of that file's config dir."""

    def __init__(self, option_strings: list[str], primary: str, dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: Optional[str] = None) -> None:
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)
        self.primary = primary

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: Optional[str] = None) -> None:
        parser.print_help()
        note = ""
        try:
            config_dir, name, extra = locate_config(getattr(namespace, "config", None), self.primary)
        except ConfigError as e:
            config_dir, name, extra = CONFIG_DIR, self.primary, []
            note = f"({e} Listing {CONFIG_DIR} instead.)\n\n"
        sys.stdout.write("\n" + note + config_help(config_dir, name, extra))
        parser.exit(0)


def build_parser(prog: str, primary: Optional[str] = None) -> argparse.ArgumentParser:
    """The shared parser. With ``primary`` (the entry point's config), ``--help`` also lists the config
    groups, their options and the primary's defaults list (``config_help``)."""
    p = argparse.ArgumentParser(
        prog=prog, add_help=primary is None,
        description="Compose a config from configs/ (Hydra 1.3 semantics) and run this entry point.",
        epilog=None if primary else
        "Overrides: key=value (change), +key=value (add), ++key=value (add or change), "
        "~key (delete), group=option (choose a config). Sweeps with -m: key=a,b or range(...).")
    if primary is not None:
        p.add_argument("-h", "--help", action=_ConfigHelpAction, primary=primary,
                       help="show this help, the config groups and the defaults list, and exit "
                            "(of --config PATH's config dir when --config comes first)")
    p.add_argument("--config", metavar="PATH",
                   help="a primary config (configs/finetune.yaml) or an experiment file "
                        "(configs/experiment/.../x.yaml, composed as experiment=... on this script's primary)")
    p.add_argument("-m", "--multirun", action="store_true", help="run a sweep: one job per combination")
    p.add_argument("--cfg", choices=["job", "hydra", "all"], help="print the composed config and exit")
    p.add_argument("--resolve", action="store_true", help="with --cfg: resolve interpolations")
    p.add_argument("--info", choices=["defaults"], help="print the final defaults list and exit")
    p.add_argument("--job-index", type=int, metavar="N",
                   help="run only job N (0-based) of the sweep, e.g. $SLURM_ARRAY_TASK_ID")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. trainer.max_epochs=50")
    return p


def locate_config(path: Optional[str], primary: str) -> tuple[str, str, list[str]]:
    """(config_dir, config_name, extra overrides) for ``--config PATH`` (or the default primary)."""
    if path is None:
        return CONFIG_DIR, primary, []
    full = os.path.abspath(path)
    if not os.path.isfile(full):
        raise ConfigError(f"--config '{path}' does not exist. Give a YAML file such as configs/{primary}.yaml.")
    if not full.endswith(".yaml"):
        raise ConfigError(f"--config '{path}' is not a .yaml file.")
    folder = os.path.dirname(full)
    config_dir = folder
    while os.path.basename(config_dir) != "configs" and os.path.dirname(config_dir) != config_dir:
        config_dir = os.path.dirname(config_dir)
    if os.path.basename(config_dir) != "configs":
        return folder, os.path.basename(full)[:-5], []  # a standalone config folder
    rel = os.path.relpath(full, config_dir)[:-5].replace(os.sep, "/")
    if "/" not in rel:
        return config_dir, rel, []
    group, _, option = rel.partition("/")
    if group != "experiment":
        raise ConfigError(
            f"--config '{path}' is a '{group}' option, not a primary or an experiment. "
            f"Choose it with the override {group}={option} instead.")
    return config_dir, primary, [f"experiment={option}"]


_HELP_WIDTH = 100


def _defaults_entry(raw: Any) -> tuple[str, Any, bool]:
    """(the written key, the option, whether it chooses a group) of one raw defaults entry
    (``_self_`` and ``- name`` choose none)."""
    if isinstance(raw, dict) and len(raw) == 1:
        key, option = next(iter(raw.items()))
        return str(key), option, True
    return str(raw), None, False


def _option_text(option: Any) -> str:
    if option is None:
        return "null"
    return f"[{', '.join(map(str, option))}]" if isinstance(option, list) else str(option)


def _entry_group(key: str) -> str:
    """The group a defaults key chooses: ``override /model@x`` -> ``model``, ``optional local`` -> ``local``."""
    group = key.split()[-1].split("@")[0]
    return group.lstrip("/")


def config_help(config_dir: str, primary: str, overrides: list[str] = ()) -> str:
    """Hydra-style application help: every config group of ``config_dir`` with its options (a group is
    a folder, an option a .yaml file; a sub-folder is a line of its own, ``experiment/fine_tuning: ...``),
    the primary configs, the primary's defaults list with the choices it ends with (after the
    experiment's ``override`` entries and ``overrides``), and the override syntax."""
    import textwrap

    from util.config import _Repo  # the composer's view of a config dir (group_options)

    repo = _Repo(config_dir)
    shown_dir = os.path.relpath(repo.root) if not os.path.relpath(repo.root).startswith("..") else repo.root
    loaded = repo.load(primary)
    entries = [_defaults_entry(raw) for raw in (loaded.defaults if loaded is not None else [])]
    try:
        final = dict(compose(config_dir, primary, list(overrides), mode="MULTIRUN", resolve=False)
                     ["hydra"]["runtime"]["choices"])
    except ConfigError:  # a config that does not compose still gets its groups listed
        final = {}

    groups = []
    for base, dirs, _ in os.walk(repo.root):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
        rel = os.path.relpath(base, repo.root).replace(os.sep, "/")
        if rel != ".":
            groups.append(rel)
    listed = [_entry_group(k) for k, _, chooses in entries if chooses]
    rank = {g: i for i, g in enumerate(dict.fromkeys(listed))}
    groups.sort(key=lambda g: (rank.get(g.split("/")[0], len(rank)), g.split("/")[0], g))

    def wrapped(label: str, text: str, indent: int) -> list[str]:
        return textwrap.wrap(text, _HELP_WIDTH, initial_indent=f"  {label:<{indent}}",
                             subsequent_indent=" " * (indent + 2)) or [f"  {label}"]

    indent = max([len(g) + 2 for g in groups] + [16])
    lines = [f"== Config groups of {shown_dir}/ == (choose an option with group=option)", ""]
    nested_example = own_example = None
    for g in groups:
        options = repo.group_options(g)
        if options:
            text = ", ".join(options)
            if "/" in g and nested_example is None and g not in final:
                top, _, sub = g.partition("/")
                nested_example = f"{top}={sub}/{options[0]}"
            if "/" in g and own_example is None and g in final:
                own_example = f"{g}={options[-1]}"
        else:
            subs = [s for s in groups if s.startswith(g + "/")]
            text = f"(options in {', '.join(subs)})" if subs else "(no options)"
        lines += wrapped(f"{g}:", text, indent)
    notes = []
    if nested_example:
        notes.append(f"a sub-folder's option is chosen through its group ({nested_example})")
    if own_example:
        notes.append(f"a sub-folder in the defaults list is a group of its own ({own_example})")
    if notes:
        lines += [""] + textwrap.wrap("Nested: " + "; ".join(notes) + ".", _HELP_WIDTH,
                                      initial_indent="  ", subsequent_indent="  ")
    primaries = sorted(f[:-5] for f in os.listdir(repo.root)
                       if f.endswith(".yaml") and os.path.isfile(os.path.join(repo.root, f)))
    if primaries:
        lines += ["", f"Primary configs (--config {shown_dir}/NAME.yaml): {', '.join(primaries)}"]

    lines += ["", f"== Defaults list of {primary} == (merge order, later wins; -> the choice it ends with"
                  f"{', given ' + ' '.join(overrides) if overrides else ''})", ""]
    key_width = max([len(k) + 1 for k, _, chooses in entries if chooses] + [8])
    for key, option, chooses in entries:
        if not chooses:
            lines.append(f"  {key}")
            continue
        shown = _option_text(option)
        ends = _option_text(final.get(_entry_group(key), option))
        line = f"  {key + ':':<{key_width}} {shown}"
        if final and ends != shown:
            line = f"{line:<{key_width + 28}} -> {ends}"
        lines.append(line)
    extra_choices = [f"{g}={o}" for g, o in final.items() if "/" in g and o is not None
                     and g not in listed]
    if extra_choices:
        lines.append(f"  (from the configs themselves: {', '.join(extra_choices)})")

    lines += ["", "== Overrides == (Hydra 1.3 grammar)", "",
              "  key=value        change a key (it must exist)    +key=value   add a key",
              "  ++key=value      add or change                   ~key         delete a key",
              "  group=option     choose a config of a group      +group=option / ~group   append / remove a group",
              "  -m key=a,b       a sweep (also range(1,4), choice(x,y), group=glob(*), hparams_search=...)",
              "",
              "  --cfg job        print the composed job config and exit (--cfg hydra|all, --resolve)",
              "  --info defaults  print the final defaults list (config file, package) in merge order and exit",
              ""]
    return "\n".join(lines)


def _print_defaults(config_dir: str, name: str, overrides: list[str]) -> None:
    rows = defaults_list(config_dir, name, overrides)
    headers = ("Config path", "Package", "_self_", "Parent")
    table = [(r["config_path"], r["package"], str(r["is_self"]), r["parent"] or "") for r in rows]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |"
    print("\nDefaults List\n*************")
    print(line)
    print("-" * len(line))
    for t in table:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(t, widths)) + " |")


def _agreed_now() -> dt.datetime:
    """One timestamp for the whole run, the same on every rank (it names the run directory)."""
    now = dt.datetime.now()
    if distributed.world_size() > 1:
        distributed.init_distributed()
        now = distributed.broadcast_object(now)
    return now



def _write_run_files(output_dir: str, tree: dict) -> None:
    hydra = tree["hydra"]
    subdir = os.path.join(output_dir, str(hydra.get("output_subdir") or ".hydra"))
    os.makedirs(subdir, exist_ok=True)
    job = {k: v for k, v in tree.items() if k != "hydra"}
    atomic_write_text(os.path.join(subdir, "config.yaml"), to_yaml(job))
    atomic_write_text(os.path.join(subdir, "hydra.yaml"), to_yaml({"hydra": hydra}))
    atomic_write_text(os.path.join(subdir, "overrides.yaml"), to_yaml(list(hydra["overrides"]["task"])))


def _log_file(cfg: dict, output_dir: str, job_name: str) -> str:
    """``hydra.job_logging.handlers.file.filename`` when set and resolved, else ``<output_dir>/<job>.log``."""
    try:
        name = cfg["hydra"]["job_logging"]["handlers"]["file"]["filename"]
    except (KeyError, TypeError):
        name = None
    if isinstance(name, str) and name and "${" not in name:
        return name
    return os.path.join(output_dir, f"{job_name}.log")


def _setup_logging(log_file: Optional[str], level: str) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    root.setLevel(getattr(logging, str(level).upper(), logging.INFO))
    fmt = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    if distributed.is_main_process():
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(fmt)
        root.addHandler(stream)
        if log_file is not None:
            os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
            fh = logging.FileHandler(log_file)
            fh.setFormatter(fmt)
            root.addHandler(fh)


def _log_level(tree: dict) -> str:
    try:
        return str(tree["hydra"]["job_logging"]["root"]["level"])
    except (KeyError, TypeError):
        return "INFO"


# the extras group (applied here, for every entry point)
PRINT_CONFIG_STYLES = ("compact", "full")
EXTRAS_SCHEMA = {"ignore_warnings": Bool(), "enforce_tags": Bool(),
                 "print_config": AnyOf(Bool(), Choice(*PRINT_CONFIG_STYLES), nullable=True)}

# the config tree (extras.print_config): these sections first, then the rest in config order
TREE_ORDER = ("data", "model", "modality", "trainer", "callbacks", "logger", "paths", "extras")
_COMPACT_DEPTH = 2  # compact: mappings below a section's own sub-mappings become `key: {N keys}`
_COMPACT_LIST = 6  # compact: longer lists show their first items and how many more


def _tree_value(value: Any, compact: bool) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value) if value == "" or "\n" in value else value
    if isinstance(value, dict):
        if compact:
            return f"{{{len(value)} keys}}"
        return "{" + ", ".join(f"{k}: {_tree_value(v, compact)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        items = list(value)
        more = ""
        if compact and len(items) > _COMPACT_LIST:
            more = f", ... (+{len(items) - (_COMPACT_LIST - 1)} more)"
            items = items[:_COMPACT_LIST - 1]
        return "[" + ", ".join(_tree_value(v, compact) for v in items) + more + "]"
    return str(value)


def config_tree(cfg: dict, choices: Optional[dict] = None, style: str = "compact") -> str:
    """The job config (``hydra`` left out) as a tree drawn like rich's: the sections of ``TREE_ORDER``
    first, each labelled with its group's choice (``model (mae)``, from ``hydra.runtime.choices``),
    ``key: value`` leaves. ``compact``: mappings deeper than 2 levels collapse to ``key: {N keys}`` and
    long lists are shortened; ``full``: everything."""
    if style not in PRINT_CONFIG_STYLES:
        raise ConfigError(f"print style '{style}' is not one of {', '.join(PRINT_CONFIG_STYLES)}")
    compact = style == "compact"
    choices = {str(g): o for g, o in (choices or {}).items() if o is not None}
    job = {k: v for k, v in cfg.items() if k != "hydra"}
    order = [k for k in TREE_ORDER if k in job] + [k for k in job if k not in TREE_ORDER]
    # choices of groups without a section of their own (experiment, debug, ... are _global_)
    first = ("experiment", "hparams_search", "debug")
    outside = [f"{g}={_option_text(choices[g])}" for g in
               sorted(choices, key=lambda g: first.index(g) if g in first else len(first))
               if not g.startswith("hydra") and g.split("/")[0] not in job]
    lines = ["CONFIG" + (f" ({', '.join(outside)})" if outside else "")]

    def walk(node: dict, keys: list, prefix: str, depth: int, path: str) -> None:
        for i, key in enumerate(keys):
            value = node[key]
            last = i == len(keys) - 1
            branch, extend = ("└── ", "    ") if last else ("├── ", "│   ")
            where = f"{path}/{key}" if path else str(key)
            label = str(key) + (f" ({_option_text(choices[where])})" if where in choices else "")
            if isinstance(value, dict) and value and not (compact and depth > _COMPACT_DEPTH):
                lines.append(prefix + branch + label)
                walk(value, list(value), prefix + extend, depth + 1, where)
            else:
                lines.append(f"{prefix}{branch}{label}: {_tree_value(value, compact)}")

    walk(job, order, "", 1, "")
    return "\n".join(lines)


def _print_config_style(value: Any) -> Optional[str]:
    """``extras.print_config``: compact | full | true (compact) | false or null (nothing)."""
    if value is None or value is False:
        return None
    if value is True:
        return "compact"
    if isinstance(value, str) and value in PRINT_CONFIG_STYLES:
        return value
    raise ConfigError(f"extras.print_config={value!r}: give compact, full, true (compact) or false "
                      "(e.g. extras.print_config=full).")


def apply_extras(cfg: Config, choices: Optional[dict] = None) -> None:
    """The ``extras`` group: silence warnings, insist on tags, print the config as a tree (logged, so it
    lands in the job's log file; rank 0 only). ``choices``: the group choices
    (``hydra.runtime.choices`` of the composed tree; read from ``cfg`` when not given)."""
    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        import warnings

        warnings.filterwarnings("ignore")
    if extras.get("enforce_tags") and not cfg.get("tags"):
        raise ConfigError("tags are empty but extras.enforce_tags is true: name the run, e.g. "
                          "tags=[baseline,v1], or set extras.enforce_tags=false.")
    style = _print_config_style(extras.get("print_config"))
    if style and distributed.is_main_process():
        if choices is None:
            runtime = (cfg.get("hydra") or {}).get("runtime") or {}
            choices = runtime.get("choices") if isinstance(runtime, dict) else None
        log.info("config:\n%s", config_tree(cfg, choices, style))


def _is_timestamped(pattern: Any) -> bool:
    """A run/sweep directory pattern that names a new directory per start (``${now:...}``)."""
    return isinstance(pattern, str) and "${now:" in pattern


def claim_new_directory(path: str) -> str:
    """Create ``path`` exclusively; when it exists (two runs started in the same second) create
    ``path_1``, ``path_2``, ... instead. Returns the directory this process owns."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for n in range(1000):
        candidate = path if n == 0 else f"{path}_{n}"
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            continue
    raise ConfigError(f"cannot create a new run directory next to {path}: 1000 exist already")


def lock_directory(path: str, conflict: str = "two runs cannot share a run directory. Wait for it to finish, or "
                   "choose another directory (hydra.run.dir=...).") -> Optional[Any]:
    """Hold ``<path>/.run.lock`` for this process's run, so two processes never run in one directory
    (two ``resume=auto`` of the same run, a pinned ``hydra.run.dir`` started twice). Returns the open
    lock file (closing it releases the lock), or None where the file system has no locks. ``conflict``
    ends the message when another process holds it."""
    lock_path = os.path.join(path, ".run.lock")
    handle = open(lock_path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(f"{path} is in use by {holder}: {conflict}") from None
    except OSError:  # e.g. a network file system mounted without locks: run unguarded
        log.warning("cannot lock %s on this file system; make sure no other run uses this directory", path)
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {dt.datetime.now():%Y-%m-%d %H:%M:%S}\n")
    handle.flush()
    return handle


def _run_job(main: MainFn, config_dir: str, name: str, overrides: list[str], job_name: str,
             now: dt.datetime, mode: str, job_num: Optional[int]) -> tuple[dict, str, Optional[float]]:
    tree = compose(config_dir, name, overrides, mode=mode, job_num=job_num, job_name=job_name,
                   now=now, resolve=False)
    output_dir = tree["hydra"]["runtime"]["output_dir"]
    if output_dir == "???":
        key = "hydra.run.dir" if mode == "RUN" else "hydra.sweep.dir"
        try:
            resolve_key(tree, key, now)
            reason = ""
        except ConfigError as e:  # names the unknown key or the missing environment variable
            reason = f" ({e})"
        raise ConfigError(f"Cannot make the run directory: {key} does not resolve{reason}. "
                          f"Check paths.log_dir and {key} (e.g. {key}=/path/to/runs).")
    lock = None
    if distributed.is_main_process():
        if mode == "RUN" and _is_timestamped(tree["hydra"]["run"]["dir"]):
            output_dir = claim_new_directory(output_dir)  # a fresh run never shares a directory
        else:
            os.makedirs(output_dir, exist_ok=True)  # a pinned directory: a continuation, guarded by the lock
        lock = lock_directory(output_dir)
    # the other ranks use rank 0's directory, and write into it only once it exists
    output_dir = distributed.broadcast_object(output_dir)
    tree["hydra"]["runtime"]["output_dir"] = output_dir
    try:
        cfg = resolve(tree, now)
        if distributed.is_main_process():
            _write_run_files(output_dir, tree)
        _setup_logging(_log_file(cfg, output_dir, job_name), _log_level(tree))
        log.info("output directory: %s", output_dir)
        if tree["hydra"]["overrides"]["task"]:
            log.info("overrides: %s", " ".join(tree["hydra"]["overrides"]["task"]))
        apply_extras(cfg, tree["hydra"]["runtime"].get("choices"))
        seed_everything(cfg.get("seed"))
        try:
            metrics = dict(main(cfg) or {})
        except SchemaError as e:  # say where each bad value was set: a config file or an override
            raise e.with_sources(lambda key: value_source(config_dir, name, overrides, key, mode=mode,
                                                          job_num=job_num)) from None
        # optional key: a standalone config tree need not define it
        objective = optimized_value(metrics, cfg.get("optimized_metric"))
    finally:
        if lock is not None:
            lock.close()
    return metrics, output_dir, objective


def optimized_value(metrics: dict, key: Optional[str]) -> Optional[float]:
    """The value of ``optimized_metric`` among the (flattened) metrics a main returned."""
    if not key:
        return None
    flat = flatten_metrics(metrics)
    if key not in flat:
        raise ConfigError(f"optimized_metric '{key}' is not among the metrics this run returned "
                          f"({', '.join(sorted(flat)) or 'none'}); set optimized_metric to one of them")
    log.info("optimized_metric %s = %s", key, flat[key])
    return flat[key]


def flatten_metrics(metrics: dict, prefix: str = "") -> dict:
    """``{"val": {"auroc": x}}`` -> ``{"val/auroc": x}``."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(flatten_metrics(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def run_cli(main: MainFn, primary: str, argv: Optional[list[str]] = None,
            prog: Optional[str] = None) -> int:
    """Parse ``argv``, compose, and run ``main`` once or per sweep job. Returns the exit code."""
    prog = prog or os.path.basename(sys.argv[0]) or f"main_{primary}.py"
    job_name = os.path.splitext(prog)[0]
    os.environ.setdefault("PROJECT_ROOT", REPO_ROOT)
    # flags may come after overrides, as with Hydra
    args = build_parser(prog, primary).parse_intermixed_args(argv)
    try:
        config_dir, name, extra = locate_config(args.config, primary)
        overrides = extra + list(args.overrides)
        if args.info == "defaults":
            _print_defaults(config_dir, name, overrides)
            return 0
        if args.cfg:
            mode = "MULTIRUN" if args.multirun else "RUN"
            tree = compose(config_dir, name, overrides, mode=mode, job_name=job_name, resolve=False)
            if args.resolve:
                tree = resolve(tree)
            part = {"job": {k: v for k, v in tree.items() if k != "hydra"},
                    "hydra": {"hydra": tree["hydra"]}, "all": tree}[args.cfg]
            sys.stdout.write(to_yaml(part))
            return 0
        multirun = args.multirun or args.job_index is not None
        if not multirun:
            probe = compose(config_dir, name, overrides, mode="MULTIRUN", job_name=job_name, resolve=False)
            multirun = probe["hydra"]["runtime"]["configured_mode"] == "MULTIRUN"
        if multirun:
            from util.sweeps import run_sweep

            return run_sweep(main, config_dir, name, overrides, job_name, args.job_index)
        _run_job(main, config_dir, name, overrides, job_name, _agreed_now(), "RUN", None)
        return 0
    except (Exception, KeyboardInterrupt) as e:
        known = explain_failure(e)
        if known is None or (os.environ.get("HYDRA_FULL_ERROR") == "1" and not isinstance(e, Preempted)):
            raise
        code, message = known
        hint = "\n\nSet the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace." \
            if code in (EXIT_USAGE, 1) else ""
        print(f"{message}{hint}", file=sys.stderr)
        return code


def _unwrap_worker_message(text: str, error: BaseException) -> str:
    """A user error raised in a DataLoader worker arrives wrapped in the worker's traceback text:
    keep the original message only."""
    if "Original Traceback" not in text:
        return text
    found = re.search(rf"(?:^|\n)[\w.]*{re.escape(type(error).__name__)}: (.*)\Z", text, re.S)
    return found.group(1).strip() if found else text


def explain_failure(error: BaseException) -> Optional[tuple[int, str]]:
    """``(exit code, one message)`` for a failure the user can act on; None for a bug (traceback)."""
    if isinstance(error, Preempted):
        return error.exit_code, ("Interrupted: " if error.exit_code == EXIT_INTERRUPTED else "Preempted: ") + str(error)
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "Interrupted (Ctrl-C) before a checkpoint could be written: nothing to resume"
    if isinstance(error, ConfigError):
        return EXIT_USAGE, f"Error: {_unwrap_worker_message(str(error), error)}"
    if isinstance(error, OSError) and error.filename is not None:
        return EXIT_USAGE, f"Error: {describe_os_error(error)}"
    if isinstance(error, NonFiniteLossError):
        return 1, f"Error: {error}"
    return None
