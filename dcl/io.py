"""Atomic file output and strict JSON input, shared by every step.

A killed job must never leave a half-written file that looks finished: everything is written to a
temporary file in the destination's directory and renamed over the destination (``os.replace`` is
atomic on POSIX file systems).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import numbers
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import yaml

__all__ = [
    "is_int",
    "is_number",
    "require_str",
    "type_name",
    "SEED_LIMIT",
    "InputError",
    "OutputError",
    "describe_os_error",
    "atomic_path",
    "atomic_write_text",
    "atomic_write_json",
    "exclusive_lock",
    "check_bounded",
    "config_chain",
    "load_yaml",
    "read_json",
    "read_yaml",
    "refuse_output_over_input",
    "staging_directory",
    "remove_stale_temporaries",
]

# The process umask, read once (os.umask can only be read by setting it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class InputError(ValueError):
    """Bad user input (file, record, what is wrong); the CLI prints it without a traceback."""


class OutputError(InputError):
    """An output that cannot be written (disk full, over quota, read-only, no permission): the
    user's to fix, so also one line without a traceback."""


def describe_os_error(error: OSError, action: str = "cannot write") -> str:
    """``cannot write <path>: No space left on device`` (the path when the error names one)."""
    reason = error.strerror or str(error)
    return f"{action} {error.filename}: {reason}" if error.filename else f"{action}: {reason}"


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; on success rename it to ``destination``.

    On an exception the temporary file is removed and ``destination`` is left untouched.
    ``suffix`` defaults to the destination's own (some writers pick the format from it).
    """
    destination = Path(destination)
    if destination.is_dir():
        raise InputError(f"output {destination} is a directory; name a file")
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(f"output {destination}: a parent of it is a file, not a directory") from None
    except OSError as error:
        raise OutputError(describe_os_error(error)) from None
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=f".{destination.name}.",
            suffix=destination.suffix if suffix is None else suffix,
            dir=destination.parent,
        )
    except OSError as error:
        raise OutputError(f"cannot write {destination}: {error.strerror}") from None
    os.close(fd)
    # mkstemp creates mode 0600; give the result the permissions open() would (0666 & ~umask),
    # so files in shared project directories stay readable by the group.
    os.chmod(tmp, 0o666 & ~_UMASK)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, destination)
    except OSError as error:
        if error.filename not in (None, str(tmp_path), tmp):
            raise  # about another file (an input the writer reads)
        # Disk full or over quota while writing, most often: say which output, not the temporary.
        raise OutputError(f"cannot write {destination}: {error.strerror or error}") from None
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def staging_directory(destination_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory in ``destination_dir``; on success move every file
    written into it to ``destination_dir`` (each synced, then renamed: atomic per file).

    For writers that pick their own file names (detectron2's evaluator). On an exception the
    directory and what it holds are removed; no destination file is touched.
    """
    destination_dir = Path(destination_dir)
    destination_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging.", dir=destination_dir))  # atomic_path's pattern
    try:
        yield staging
        for path in sorted(staging.iterdir()):
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(path, destination_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# What atomic_path and staging_directory leave behind when the process is killed (SIGKILL, a
# node failure): ".<name>.<8 random characters from mkstemp/mkdtemp><suffix>".
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}(?P<suffix>\.[^.]*)?")


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of interrupted atomic writes under ``directory`` (recursively).

    Only when nothing writes there any more (at the start of the run that owns the directory).

    Returns:
        The removed paths.
    """
    removed = []
    for path in sorted(Path(directory).rglob(".*")):
        match = _TEMPORARY.fullmatch(path.name)
        if match is None or not (match["suffix"] or "") == Path(match["name"]).suffix:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def refuse_output_over_input(output: str | os.PathLike | None, inputs: dict[str, Any]) -> None:
    """Refuse an output path that is one of the inputs (``{what: path or None}``): the same file
    also through symlinks, ``..`` or a hard link. Called before anything is read."""
    if output is None:
        return
    output = Path(output)
    for what, path in inputs.items():
        if path is None:
            continue
        same = os.path.realpath(output) == os.path.realpath(path)
        with contextlib.suppress(OSError):
            same = same or os.path.samefile(output, path)
        if same:
            raise InputError(
                f"output {output} is the {what} ({path}): writing it would destroy that input; choose another output"
            )


@contextlib.contextmanager
def exclusive_lock(lock_file: str | os.PathLike, holder: str, what: str) -> Iterator[None]:
    """Hold an exclusive POSIX lock on ``lock_file`` (created if needed) while the block runs;
    ``holder`` (who we are) is written into it for the next one to name. If another process
    holds it: ``InputError`` naming ``what`` and the holder, at once.

    ``fcntl.lockf`` locks belong to the process: the kernel releases them when it dies (also by
    SIGKILL), forked children (data-loader workers) do not inherit them, and NFS carries them
    between machines (NLM / NFSv4), so a lock outlives neither its process nor its node.
    """
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown"
            raise InputError(f"{what} is in use by another process ({other}): wait for it to end, or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode() + b"\n", 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def atomic_write_text(destination: str | os.PathLike, text: str) -> None:
    with atomic_path(destination) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN/Infinity; write them as null so every JSON reader accepts the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def atomic_write_json(destination: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON (NaN/inf as null, keys in insertion order, trailing newline)."""
    atomic_write_text(destination, json.dumps(_finite_or_none(obj), indent=indent, allow_nan=False) + "\n")


# Bounds of what a user file may hold once read: nesting (lists and mappings inside each other;
# COCO files need 5) and, for YAML, values once its aliases are expanded (an alias is a reference
# the loader shares, but every consumer walks it again: nine levels of 9 aliases are 387 million).
MAX_NESTING = 100
MAX_YAML_VALUES = 1_000_000
# numpy (which detectron2 seeds with SEED + rank) takes seeds below 2^32 (the schema's maximum):
# the workflow planner and `dcl train` both check it.
SEED_LIMIT = 2**32


def check_bounded(value: Any, max_values: int | None = None) -> None:
    """Raises ValueError if the lists and mappings in ``value`` nest deeper than
    :data:`MAX_NESTING`, contain themselves, or (``max_values``) hold more values than that once
    every shared reference (a YAML alias) is expanded. Iterative, and linear in the distinct
    containers: each one's expanded size is computed once."""
    done: dict[int, tuple[int, int]] = {}  # id -> (expanded values, nesting)
    open_ids: set[int] = set()
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        item, finished = stack.pop()
        if not isinstance(item, (list, dict)):
            continue
        key, children = id(item), list(item.values()) if isinstance(item, dict) else item
        if finished:
            open_ids.discard(key)
            inner = [done[id(c)] for c in children if isinstance(c, (list, dict))]
            values = 1 + len(children) - len(inner) + sum(v for v, _ in inner)
            depth = 1 + max((d for _, d in inner), default=0)
            if max_values is not None and values > max_values:
                raise ValueError(f"more than {max_values:,} values once its aliases are expanded")
            if depth > MAX_NESTING:
                raise ValueError(f"nested deeper than {MAX_NESTING} levels")
            done[key] = (values, depth)
        elif key not in done:
            if key in open_ids:
                raise ValueError("it contains itself (an alias to an enclosing node)")
            open_ids.add(key)
            stack.append((item, True))
            stack.extend((c, False) for c in children if isinstance(c, (list, dict)) and id(c) not in done)


def load_yaml(stream: Any, loader: type = yaml.SafeLoader) -> Any:
    """``yaml.load`` (safe by default), refusing with ValueError (the reason) documents that
    expand past :data:`MAX_YAML_VALUES` values or nest past :data:`MAX_NESTING` levels, before
    anything walks them. YAML syntax errors raise ``yaml.YAMLError``."""
    try:
        data = yaml.load(stream, Loader=loader)  # aliases become shared objects: no expansion yet
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_NESTING} levels") from None
    check_bounded(data, MAX_YAML_VALUES)
    return data


def config_chain(config_file: str) -> list[dict]:
    """A detectron2 YAML config and its ``_BASE_`` files, each read as plain YAML: the named file
    first, then its base, its base's base, ... (a base given as a URL ends the chain). Plain
    YAML because detectron2's ``merge_from_file`` falls back to ``yaml.unsafe_load``, which runs
    ``!!python/...`` tags.

    Raises:
        InputError: a file is not plain YAML (a Python tag, a syntax error), not a mapping, beyond
            the bounds of :func:`load_yaml`, or the chain loops; naming the file.
    """
    chain: list[str] = []
    documents: list[dict] = []
    path = config_file
    while True:
        if os.path.realpath(path) in map(os.path.realpath, chain):
            raise InputError(f"{config_file}: the _BASE_ chain loops: {' -> '.join([*chain, path])}")
        chain.append(path)
        try:
            with open(path, encoding="utf-8") as stream:
                data = load_yaml(stream)
        except ValueError as error:
            raise InputError(f"{path}: refused: {error}") from None
        except yaml.constructor.ConstructorError as error:
            mark = error.problem_mark
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise InputError(
                f"{path}{where}: {error.problem}; config files must be plain YAML "
                "(Python tags are refused: they run code)"
            ) from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise InputError(f"{path}: not a readable YAML file: {' '.join(str(error).split())}") from None
        if data is not None and not isinstance(data, dict):
            raise InputError(
                f"{path}: a detectron2 config is a mapping of keys, this file holds a {type(data).__name__}"
            )
        documents.append(data or {})
        base = documents[-1].get("_BASE_")
        if not isinstance(base, str):
            return documents
        # detectron2's rule for _BASE_: ~ expanded, relative to the including file; URLs it fetches.
        base = os.path.expanduser(base)
        if base.startswith(("https://", "http://")):
            return documents
        path = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Load JSON, turning a missing, unreadable or truncated file into an ``InputError`` that says
    which file, where (line and column) and what is wrong."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except RecursionError:
        raise InputError(f"{what} {path}: nested deeper than {MAX_NESTING} levels") from None
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"{what} is a directory, not a file: {path}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{what} {path} is not UTF-8 text (byte {e.start}): is it the right file?") from None
    except json.JSONDecodeError as e:
        hint = " (the file ends early: truncated?)" if e.pos >= os.path.getsize(path) - 1 else ""
        raise InputError(f"{what} {path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}{hint}") from None
    try:
        check_bounded(data)
    except ValueError as error:
        raise InputError(f"{what} {path}: {error}") from None
    return data


def read_yaml(path: str | os.PathLike, what: str = "YAML file", missing_hint: str = "") -> Any:
    """Load YAML (``yaml.safe_load``), turning a missing, unreadable or malformed file into an
    ``InputError`` that says which file and what is wrong (``missing_hint`` follows "not found")."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as stream:  # a stream: YAML's messages name the file
            return load_yaml(stream)
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}{missing_hint}") from None
    except yaml.YAMLError as error:
        raise InputError(f"{what} {path} is not valid YAML: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{what} {path} cannot be read: {error}") from None
    except ValueError as error:  # load_yaml's bounds
        raise InputError(f"{what} {path} is refused: {error}") from None


# ----------------------------------------------------------------------------- field checks
def is_int(value: Any) -> bool:
    """An integer of JSON or numpy, not a boolean."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite number of JSON or numpy, not a boolean."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def type_name(value: Any) -> str:
    """A value's type as a JSON or YAML reader would call it in a message (``null`` for None)."""
    return "null" if value is None else type(value).__name__


def require_str(record: dict, key: str, where: str, choices: tuple[str, ...] | None = None) -> str:
    """``record[key]`` as a non-empty string (one of ``choices`` when given), else ``InputError``
    naming ``where`` and the key."""
    value = record.get(key)
    if not isinstance(value, str) or not value:
        raise InputError(f"{where}: '{key}' must be a non-empty string, got {type_name(value)} {value!r}")
    if choices is not None and value not in choices:
        raise InputError(f"{where}: '{key}' must be one of {', '.join(choices)}; got {value!r}")
    return value
