"""OpenAI's ``guided_diffusion.logger`` over Python's ``logging`` (+ CSV / JSON files of key-values).

Same calls as OpenAI's: ``configure(dir, format_strs)``, ``log`` / ``debug`` / ``info`` / ``warn`` /
``error``, ``logkv`` / ``logkv_mean`` / ``logkvs`` then ``dumpkvs()``, ``getkvs``, ``get_dir``,
``set_level``, ``reset``, ``scoped_configure``, ``profile_kv`` / ``profile``. Text goes to the Python logger
``"guided_diffusion"`` (handlers for ``stdout`` and ``log`` = ``DIR/log.txt``); ``csv`` and ``json`` write
``progress.csv`` / ``progress.json`` in the log folder. Only rank 0 writes files unless
``OPENAI_LOG_FORMAT_MPI`` says otherwise. No MPI: ``comm`` is accepted and ignored.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import json
import logging
import os
import sys
import tempfile
import time
from collections import defaultdict
from typing import Any

__all__ = [
    "CSVOutputFormat",
    "DEBUG",
    "DISABLED",
    "ERROR",
    "HumanOutputFormat",
    "INFO",
    "JSONOutputFormat",
    "KVWriter",
    "Logger",
    "SeqWriter",
    "WARN",
    "configure",
    "debug",
    "dumpkvs",
    "error",
    "get_current",
    "get_dir",
    "getkvs",
    "info",
    "log",
    "logkv",
    "logkv_mean",
    "logkvs",
    "make_output_format",
    "profile",
    "profile_kv",
    "record_tabular",
    "dump_tabular",
    "reset",
    "scoped_configure",
    "set_comm",
    "set_level",
    "warn",
]

DEBUG, INFO, WARN, ERROR, DISABLED = 10, 20, 30, 40, 50
PYTHON_LOGGER = "guided_diffusion"


class KVWriter:
    """Writes one dict of key-values per ``dumpkvs``."""

    def writekvs(self, kvs: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class SeqWriter:
    """Writes free text (``log`` calls)."""

    def writeseq(self, seq) -> None:
        raise NotImplementedError


def _fmt(value: Any) -> str:
    return f"{value:<8.3g}" if hasattr(value, "__float__") and not isinstance(value, int) else str(value)


class HumanOutputFormat(KVWriter, SeqWriter):
    """A handler of the Python logger ``guided_diffusion``: key-values as a table, log lines as they are."""

    def __init__(self, handler: logging.Handler) -> None:
        self.handler = handler
        self.handler.setFormatter(logging.Formatter("%(message)s"))
        py_logger = logging.getLogger(PYTHON_LOGGER)
        py_logger.setLevel(logging.DEBUG)  # the level filter is Logger.set_level's
        py_logger.propagate = False  # shown once, by this package's handlers
        py_logger.addHandler(handler)

    def writekvs(self, kvs: dict[str, Any]) -> None:
        self._emit(_table(kvs), INFO)

    def writeseq(self, seq) -> None:
        self._emit(" ".join(map(str, seq)), INFO)

    def _emit(self, message: str, level: int) -> None:
        if message:
            self.handler.handle(logging.LogRecord(PYTHON_LOGGER, level, __file__, 0, message, None, None))

    def close(self) -> None:
        logging.getLogger(PYTHON_LOGGER).removeHandler(self.handler)
        self.handler.close()


def _table(kvs: dict[str, Any]) -> str:
    if not kvs:
        return ""
    rows = [(str(k)[:30], _fmt(v)[:30]) for k, v in sorted(kvs.items())]
    kw, vw = max(len(k) for k, _ in rows), max(len(v) for _, v in rows)
    dashes = "-" * (kw + vw + 7)
    lines = [dashes] + [f"| {k:<{kw}} | {v:<{vw}} |" for k, v in rows] + [dashes]
    return "\n".join(lines)


class JSONOutputFormat(KVWriter):
    """One JSON object per line."""

    def __init__(self, filename: str) -> None:
        self.file = open(filename, "w")  # noqa: SIM115 - closed by close()

    def writekvs(self, kvs: dict[str, Any]) -> None:
        plain = {k: (float(v) if hasattr(v, "dtype") else v) for k, v in kvs.items()}
        self.file.write(json.dumps(plain) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class CSVOutputFormat(KVWriter):
    """A CSV table whose columns grow as new keys appear (earlier rows get empty cells)."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.keys: list[str] = []
        self.rows: list[dict[str, Any]] = []
        open(filename, "w").close()

    def writekvs(self, kvs: dict[str, Any]) -> None:
        new = sorted(k for k in kvs if k not in self.keys)
        self.keys.extend(new)
        self.rows.append(dict(kvs))
        if new:  # rewrite with the wider header
            with open(self.filename, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.keys, restval="")
                writer.writeheader()
                writer.writerows(self.rows)
        else:
            with open(self.filename, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.keys, restval="").writerow(kvs)


def make_output_format(format: str, ev_dir: str, log_suffix: str = "") -> KVWriter:
    """``stdout``, ``log`` (``log.txt``), ``json`` (``progress.json``) or ``csv`` (``progress.csv``)."""
    os.makedirs(ev_dir, exist_ok=True)
    if format == "stdout":
        return HumanOutputFormat(logging.StreamHandler(sys.stdout))
    if format == "log":
        return HumanOutputFormat(logging.FileHandler(os.path.join(ev_dir, f"log{log_suffix}.txt")))
    if format == "json":
        return JSONOutputFormat(os.path.join(ev_dir, f"progress{log_suffix}.json"))
    if format == "csv":
        return CSVOutputFormat(os.path.join(ev_dir, f"progress{log_suffix}.csv"))
    raise ValueError(
        f"unknown log format {format!r}; use stdout, log, json or csv (tensorboard is not offered)"
    )


class Logger:
    """Key-value accumulator and text sink over a list of output formats."""

    DEFAULT = None
    CURRENT = None

    def __init__(self, dir: str | None, output_formats: list[KVWriter], comm=None) -> None:
        self.name2val: dict[str, Any] = defaultdict(float)
        self.name2cnt: dict[str, int] = defaultdict(int)
        self.level = INFO
        self.dir = dir
        self.output_formats = output_formats
        self.comm = comm

    def logkv(self, key: str, val: Any) -> None:
        self.name2val[key] = val

    def logkv_mean(self, key: str, val: Any) -> None:
        old, cnt = self.name2val[key], self.name2cnt[key]
        self.name2val[key] = old * cnt / (cnt + 1) + val / (cnt + 1)
        self.name2cnt[key] = cnt + 1

    def dumpkvs(self) -> dict[str, Any]:
        out = dict(self.name2val)
        if any(isinstance(f, HumanOutputFormat) for f in self.output_formats):
            logging.getLogger(PYTHON_LOGGER).info(_table(out))
        for fmt in self.output_formats:
            if not isinstance(fmt, HumanOutputFormat):
                fmt.writekvs(out)
        self.name2val.clear()
        self.name2cnt.clear()
        return out

    def log(self, *args: Any, level: int = INFO) -> None:
        if self.level <= level and any(isinstance(f, SeqWriter) for f in self.output_formats):
            logging.getLogger(PYTHON_LOGGER).log(level, " ".join(map(str, args)))

    def set_level(self, level: int) -> None:
        self.level = level

    def set_comm(self, comm) -> None:
        self.comm = comm

    def get_dir(self) -> str | None:
        return self.dir

    def close(self) -> None:
        for fmt in self.output_formats:
            fmt.close()


def get_current() -> Logger:
    """The active logger (a stdout-only one until ``configure`` is called)."""
    if Logger.CURRENT is None:
        Logger.CURRENT = Logger.DEFAULT = Logger(dir=None, output_formats=[make_output_format("stdout", ".")])
    return Logger.CURRENT


def logkv(key: str, val: Any) -> None:
    """Set a diagnostic for this iteration (the last value wins)."""
    get_current().logkv(key, val)


def logkv_mean(key: str, val: Any) -> None:
    """Add to the running mean of a diagnostic for this iteration."""
    get_current().logkv_mean(key, val)


def logkvs(d: dict[str, Any]) -> None:
    """``logkv`` for every item."""
    for k, v in d.items():
        logkv(k, v)


def dumpkvs() -> dict[str, Any]:
    """Write this iteration's diagnostics to every output and start a new iteration; returns them."""
    return get_current().dumpkvs()


def getkvs() -> dict[str, Any]:
    """This iteration's diagnostics so far."""
    return get_current().name2val


def log(*args: Any, level: int = INFO) -> None:
    """Write text to the text outputs (and the Python logger ``guided_diffusion``)."""
    get_current().log(*args, level=level)


def debug(*args: Any) -> None:
    log(*args, level=DEBUG)


def info(*args: Any) -> None:
    log(*args, level=INFO)


def warn(*args: Any) -> None:
    log(*args, level=WARN)


def error(*args: Any) -> None:
    log(*args, level=ERROR)


def set_level(level: int) -> None:
    """Drop text below ``level`` (DEBUG 10, INFO 20, WARN 30, ERROR 40, DISABLED 50)."""
    get_current().set_level(level)


def set_comm(comm) -> None:
    get_current().set_comm(comm)


def get_dir() -> str | None:
    """The log folder (checkpoints of ``TrainLoop`` go there too); None before ``configure``."""
    return get_current().get_dir()


record_tabular = logkv
dump_tabular = dumpkvs


@contextlib.contextmanager
def profile_kv(scopename: str):
    """Add the time spent in the block to the diagnostic ``wait_<scopename>``."""
    key = "wait_" + scopename
    start = time.time()
    try:
        yield
    finally:
        get_current().name2val[key] += time.time() - start


def profile(n: str):
    """Decorator form of :func:`profile_kv`."""

    def decorator(func):
        def wrapped(*args, **kwargs):
            with profile_kv(n):
                return func(*args, **kwargs)

        return wrapped

    return decorator


def _rank() -> int:
    for var in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def configure(
    dir: str | None = None,
    format_strs: list[str] | None = None,
    comm=None,
    log_suffix: str = "",
    _keep_current: bool = False,
):
    """Start logging into ``dir`` (default ``$OPENAI_LOGDIR``, else a fresh folder under the temp dir).

    ``format_strs`` defaults to ``$OPENAI_LOG_FORMAT`` or ``stdout,log,csv`` on rank 0 (other ranks:
    ``$OPENAI_LOG_FORMAT_MPI`` or nothing, with a ``-rankNNN`` suffix).
    """
    if dir is None:
        dir = os.getenv("OPENAI_LOGDIR")
    if dir is None:
        stamp = datetime.datetime.now().strftime("openai-%Y-%m-%d-%H-%M-%S-%f")
        dir = os.path.join(tempfile.gettempdir(), stamp)
    dir = os.path.expanduser(dir)
    os.makedirs(dir, exist_ok=True)
    rank = _rank()
    if rank > 0:
        log_suffix = log_suffix + f"-rank{rank:03d}"
    if format_strs is None:
        env = "OPENAI_LOG_FORMAT" if rank == 0 else "OPENAI_LOG_FORMAT_MPI"
        format_strs = os.getenv(env, "stdout,log,csv" if rank == 0 else "").split(",")
    format_strs = [f for f in format_strs if f]
    if Logger.CURRENT is not None and Logger.CURRENT is not Logger.DEFAULT and not _keep_current:
        Logger.CURRENT.close()
    Logger.CURRENT = Logger(dir, [make_output_format(f, dir, log_suffix) for f in format_strs], comm=comm)
    if format_strs:
        log(f"Logging to {dir}")
    return Logger.CURRENT


def reset() -> None:
    """Back to the default (stdout-only) logger."""
    if Logger.CURRENT is not Logger.DEFAULT and Logger.CURRENT is not None:
        Logger.CURRENT.close()
        Logger.CURRENT = Logger.DEFAULT
        log("Reset logger")


@contextlib.contextmanager
def scoped_configure(dir: str | None = None, format_strs: list[str] | None = None, comm=None):
    """``configure`` for the duration of a ``with`` block, then the previous logger again."""
    previous = Logger.CURRENT
    configure(dir=dir, format_strs=format_strs, comm=comm, _keep_current=True)
    try:
        yield
    finally:
        Logger.CURRENT.close()
        Logger.CURRENT = previous
