"""Command lines of typed configs: one generic parser for every experiment.

An experiment's command line is its config file (``get_config(preset)``, see
:func:`jkt.config_file.load_config_file`) plus overrides, applied in command-line order:

* ``--config=experiments/configs/distill.py:paper`` picks the starting config
  (``--preset paper`` is the short form for the experiment's own config file);
* ``--config.FIELD.PATH=VALUE`` sets any field (``--config.optim.learning_rate=3e-3``);
* short flags (:class:`Flag`) are named aliases of one or more field paths
  (``--lr`` -> ``optim.learning_rate``, ``--width-multiplier`` -> both networks' widths).

Every flag therefore changes the resolved config and nothing else; the experiment saves
that config in its work directory. Usage errors (unknown flag or field, bad value, a
config's own validation) print one line and exit with status 2 (``argparse``'s
convention).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import pkgutil
import signal
import sys
import threading
import typing
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from jkt import config as config_lib
from jkt import config_file

SET = "--set"  # internal: --config.PATH=VALUE is rewritten to --set PATH=VALUE


@dataclasses.dataclass(frozen=True)
class Flag:
    """A short command-line alias of config fields.

    Attributes:
      name: the flag, e.g. ``"--lr"``.
      paths: dotted config paths it sets (all to the same value).
      help: help text.
      const: for a flag that takes no value (``--normalize``, ``--no-progress``): the
        value it sets.
      metavar: placeholder shown in ``--help``.
    """

    name: str
    paths: tuple[str, ...]
    help: str = ""
    const: Any = None
    metavar: str | None = None

    def __post_init__(self):
        if isinstance(self.paths, str):
            object.__setattr__(self, "paths", (self.paths,))


def optim_flags(prefix: str = "", path: str = "optim", who: str = "student") -> tuple[Flag, ...]:
    """``--[prefix]epochs/batch-size/lr/optimizer/batching`` for the :class:`OptimConfig`
    at ``path``."""
    return (
        Flag(f"--{prefix}epochs", f"{path}.epochs", f"{who} epochs"),
        Flag(f"--{prefix}batch-size", f"{path}.batch_size", f"{who} global batch size"),
        Flag(f"--{prefix}lr", f"{path}.learning_rate", f"{who} initial learning rate"),
        Flag(f"--{prefix}optimizer", f"{path}.name", f"{who} optimiser: adam | sgd"),
        Flag(f"--{prefix}batching", f"{path}.batching",
             f"{who} batches: cycle (always full, across epoch boundaries) | epoch (one pass "
             "an epoch, the last batch short)"),
    )


def data_flags(path: str = "data") -> tuple[Flag, ...]:
    """The flags of the :class:`jkt.data.DataConfig` at ``path`` (``--dataset`` ...)."""
    return (
        Flag("--dataset", f"{path}.name", "digits | cifar10 | cifar100 | folder:PATH (folder "
             "or .zip/.tar.xz) | imagenet2012 (tfds, --pipeline stream only)"),
        Flag("--data-dir", f"{path}.data_dir", "tfds data directory (cifar10/cifar100)"),
        Flag("--image-size", f"{path}.image_size", "side of the square input images"),
        Flag("--val-fraction", f"{path}.val_fraction", "validation set, a fraction of train"),
        Flag("--validation", f"{path}.validation", "held_out: set aside from train | unused: "
             "train on all, validate subset runs on images not in them | none"),
        Flag("--augment", f"{path}.augment", "none | crop | crop+flip (pad-4 crop, flip)"),
        Flag("--pipeline", f"{path}.pipeline", "resident | stream (decoded when due) | auto"),
    )


class _Override(argparse.Action):
    """Appends ``(paths, value)`` to ``namespace.overrides`` in command-line order."""

    def __init__(self, option_strings, dest, paths=(), const=None, **kwargs):
        self.paths = paths
        super().__init__(option_strings, dest, const=const, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        value = self.const if self.nargs == 0 else values
        if self.dest == "set":
            path, eq, value = values.partition("=")
            if not eq:
                parser.error(f"--config.{path} needs a value: --config.{path}=VALUE")
            paths = (path,)
        else:
            paths = self.paths
        namespace.overrides = [*getattr(namespace, "overrides", []), (paths, value)]


class _Parser(argparse.ArgumentParser):
    """``argparse`` with one-line errors: ``PROG: error: MESSAGE (see --help)``, status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _rewrite(argv: Sequence[str]) -> list[str]:
    """``--config.a.b=v`` / ``--config.a.b v`` -> ``--set a.b=v`` (``--set a.b`` when the
    value is missing, which :class:`_Override` reports)."""
    out, i = [], 0
    while i < len(argv):
        tok = argv[i]
        if tok.startswith("--config."):
            body = tok[len("--config."):]
            if "=" not in body and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                i += 1
                body = f"{body}={argv[i]}"
            out += [SET, body]
        else:
            out.append(tok)
        i += 1
    return out


def _field_listing(cfg) -> str:
    lines = []
    for path in config_lib.field_paths(cfg):
        value = config_lib.get(cfg, path)
        if isinstance(value, dict):
            continue
        lines.append(f"  --config.{path}={_show(value)}")
    return "\n".join(lines)


def _show(value) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) if value else "none"
    return "none" if value is None else str(value)


def build_parser(*, description: str, epilog: str, flags: Sequence[Flag], presets: Sequence[str],
                 default_preset: str, default_cfg,
                 preset_flags: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """The ``argparse`` parser of an experiment (used by :func:`parse`; tests walk its flags)."""
    listing = _field_listing(default_cfg)
    p = _Parser(
        description=description, allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"{epilog.rstrip()}\n\nEvery field of the config can be set with "
               f"--config.FIELD=VALUE (values of the {default_preset!r} preset shown):\n"
               f"{listing}\n")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--preset", choices=list(presets), default=None,
                       help=f"starting configuration (default: {default_preset})")
    start.add_argument("--config", metavar="FILE.py[:PRESET]", default=None,
                       help="config file whose get_config(PRESET) gives the starting config")
    for flag, name in (preset_flags or {}).items():
        start.add_argument(flag, dest="preset", action="store_const", const=name,
                           help=f"same as --preset {name}")
    p.add_argument(SET, dest="set", action=_Override, metavar="PATH=VALUE",
                   help=argparse.SUPPRESS)
    for f in flags:
        kwargs = dict(nargs=0, const=f.const) if f.const is not None else dict(
            metavar=f.metavar or f.paths[0].rsplit(".", 1)[-1].upper())
        p.add_argument(f.name, dest=f.name.lstrip("-").replace("-", "_"), action=_Override,
                       paths=f.paths, help=f.help + (f" [{', '.join(f.paths)}]"), **kwargs)
    return p


def parse(argv: Sequence[str] | None, configs: ModuleType, flags: Sequence[Flag], *,
          description: str, epilog: str = "", preset_flags: dict[str, str] | None = None):
    """The resolved config of a command line (see the module docstring).

    ``configs`` is the experiment's config module (a file with ``PRESETS`` and
    ``get_config(preset)``; ``get_config(None)`` is the default); ``--preset NAME`` means
    ``--config=<its file>:NAME``. ``preset_flags`` are shorthands (``{"--small":
    "small"}``). Exits with status 2 and one line on a usage error.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    default_cfg = configs.get_config(None)
    default = next((k for k, f in configs.PRESETS.items() if f() == default_cfg), "default")
    p = build_parser(description=description, epilog=epilog, flags=flags,
                     presets=list(configs.PRESETS), default_preset=default,
                     default_cfg=default_cfg, preset_flags=preset_flags)
    ns = p.parse_args(_rewrite(argv))
    try:
        if ns.config is not None:
            cfg = _config_file(ns.config, configs, type(default_cfg))
        elif ns.preset:
            cfg = configs.get_config(ns.preset)
        else:
            cfg = default_cfg
        cfg = config_lib.apply_overrides(cfg, [(path, value) for paths, value in
                                               getattr(ns, "overrides", []) for path in paths])
    except config_lib.ConfigError as e:
        p.error(str(e))
    return cfg


def _config_file(spec: str, configs: ModuleType, expected: type):
    """:func:`jkt.config_file.load_config_file` of ``spec``, refused in one line unless it gives
    an ``expected`` config (another command's file names that command)."""
    cfg = config_file.load_config_file(spec)
    if isinstance(cfg, expected):
        return cfg
    owner = _command_of(type(cfg), configs)
    whose = f" (the config of {owner})" if owner else ""
    raise config_lib.ConfigError(
        f"config file {spec.partition(':')[0]} gives a {type(cfg).__name__}{whose}; this "
        f"command takes a {expected.__name__}")


def _command_of(cls: type, configs: ModuleType) -> str | None:
    """``python -m ROOT.NAME`` when a sibling ``ROOT.configs.NAME`` of the config module
    ``configs`` declares ``get_config(...) -> cls``; ``None`` when none does."""
    package = configs.__name__.rpartition(".")[0]
    root = package.rpartition(".")[0]
    try:
        search = importlib.import_module(package).__path__ if root else []
    except (ImportError, AttributeError):
        return None
    for info in pkgutil.iter_modules(search):
        if _config_type(f"{package}.{info.name}") is cls:
            return f"python -m {root}.{info.name}"
    return None


def _config_type(module_name: str) -> type | None:
    """The declared return type of ``module_name``'s ``get_config``, or ``None``."""
    try:
        module = importlib.import_module(module_name)
        return typing.get_type_hints(module.get_config).get("return")
    except Exception:  # a module that cannot tell names no command; the error stays the same
        return None


def main(cfg, run_fn: Callable[..., Any], errors: tuple[type[BaseException], ...] = ()):
    """Prepares ``cfg.workdir`` (:func:`jkt.workdir.prepare`: JAX setup, lock,
    ``config.json``) and returns :func:`run` of ``run_fn(cfg, stop=...)``, whose training
    loops poll ``stop`` (set by the first Ctrl-C). The work directory's lock is released
    however ``run_fn`` ends; a launch refused for its settings (a usage error) puts
    ``config.json`` back as it was."""
    from jkt import workdir

    stop = threading.Event()

    def prepared(c):
        before = workdir.launch_record(c.workdir)
        out, lock = workdir.prepare(c)
        try:
            return run_fn(c, stop=stop.is_set)
        except USAGE_ERRORS:
            workdir.restore_launch_record(out, before)
            raise
        finally:
            lock.release()

    return run(prepared, cfg, errors, stop=stop)


USAGE_ERRORS = (config_lib.ConfigError, ValueError, FileNotFoundError)


def run(main: Callable[[Any], Any], cfg, errors: tuple[type[BaseException], ...] = (), *,
        stop: threading.Event | None = None) -> Any:
    """Calls ``main(cfg)`` and turns the ways it can stop into one line on stderr:

    * settings that do not fit the data or the work directory (``ValueError``,
      ``FileNotFoundError``): ``error: ...``, exit status 2, like a usage error;
    * a failure while running (``errors``, e.g. a non-finite loss; a busy work
      directory): ``error: ...``, exit status 1;
    * a disk that fills up or turns read-only while running (``OSError``): ``error:
      cannot write ...`` naming the file or directory, the cause and the fix, exit status
      1; the process then ends without waiting on the checkpoint library's background
      threads, which a failed save may leave behind;
    * Ctrl-C: sets ``stop``, which the training loop polls: it stops at the next step,
      saves a checkpoint there and waits for it (a second Ctrl-C stops at once); then
      ``interrupted`` and how to resume, exit status 130. The process ends without waiting
      on background threads, which an interrupted checkpoint library may leave behind.

    While ``main`` runs, Orbax's logs and TensorStore's late callbacks of a failed
    checkpoint write are silenced (:func:`quiet_background_write_failures`): the same
    failure reaches ``main`` as one :class:`jkt.workdir.WriteError`.
    """
    from jkt import workdir_lock

    stop = threading.Event() if stop is None else stop
    previous = _install_stop_handler(stop)
    loud = quiet_background_write_failures()
    try:
        return main(cfg)
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint is kept; run the same command again to resume",
              file=sys.stderr)
        _exit_now(130)
    except USAGE_ERRORS as e:  # before OSError: FileNotFoundError is one
        _fail(e, 2)
    except (*errors, workdir_lock.WorkdirBusyError) as e:
        _fail(e, 1)
    except OSError as e:
        print(f"error: {_disk_message(e, cfg)}", file=sys.stderr)
        _exit_now(1)
    finally:
        loud()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _install_stop_handler(stop: threading.Event):
    """First Ctrl-C: sets ``stop``; second: ``KeyboardInterrupt``. Returns the previous
    handler (``None`` off the main thread, where none is set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        print("stopping after the current step (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)
        stop.set()

    return signal.signal(signal.SIGINT, handler)


class _BackgroundWriteNoise(logging.Filter):
    """Drops Orbax's error logs (with tracebacks) of a failed write in its background
    threads: the same failure reaches the caller of ``save``/``wait``/``close``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or "orbax" not in record.pathname:
            return True
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or not _write_noise(exc)


def _write_noise(exc: BaseException) -> bool:
    """A write failure, or what it leaves behind in Orbax's threads (an event loop or an
    executor already shut down by the failed save)."""
    from jkt import workdir

    text = str(exc)
    return (workdir.os_cause(exc) is not None or "Event loop is closed" in text
            or "cannot schedule new futures after shutdown" in text)


def quiet_background_write_failures() -> Callable[[], None]:
    """Installs a filter of Orbax's background write-failure logs and an
    unraisable-exception hook that drops what TensorStore's callbacks raise into the event
    loop of a failed save after it closed (everything else passes to the previous hook).
    Returns the function that removes both again."""
    logger, noise = logging.getLogger("absl"), _BackgroundWriteNoise()
    logger.addFilter(noise)
    previous = sys.unraisablehook

    def hook(unraisable):
        if unraisable.exc_value is None or not _write_noise(unraisable.exc_value):
            previous(unraisable)

    sys.unraisablehook = hook

    def undo():
        logger.removeFilter(noise)
        if sys.unraisablehook is hook:
            sys.unraisablehook = previous

    return undo


def _exit_now(status: int):
    """Flushes and ends the process (its work-directory lock was released as the failure
    left :func:`main`'s ``run_fn``)."""
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _disk_message(e: OSError, cfg) -> str:
    """One line for a failed disk operation: a :class:`jkt.workdir.WriteError` as it is
    (also when a clean-up failing on the same disk raised another error while it
    propagated); another full-disk or not-writable error with the work directory and the
    fix added."""
    from jkt import workdir

    first, seen = e, set()
    while first is not None and id(first) not in seen:
        if isinstance(first, workdir.WriteError):
            e = first
            break
        seen.add(id(first))
        first = first.__context__
    text = str(e).replace(chr(10), " ")
    if isinstance(e, workdir.WriteError) or e.errno not in (*workdir.DISK_FULL,
                                                            *workdir.NOT_WRITABLE):
        return text
    where = getattr(cfg, "workdir", None)
    inside = f" (work directory {where})" if where else ""
    return (f"{text}{inside} — {workdir.disk_fix(e.errno, where or 'it')} and rerun the same "
            "command to resume from the last checkpoint")


def _fail(e: BaseException, status: int):
    print(f"error: {str(e).replace(chr(10), ' ')}", file=sys.stderr)
    raise SystemExit(status) from None


__all__ = ["Flag", "build_parser", "data_flags", "main", "optim_flags", "parse",
           "quiet_background_write_failures", "run"]
