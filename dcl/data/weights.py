"""``dcl weights``: pretrained and released checkpoints in a local weights directory.

GPU nodes of a cluster often have no internet. ``dcl weights download`` runs where there is
internet (a login node; the workflow runs it as a local rule) and stores each file under the
weights directory; ``dcl train`` then maps ``MODEL.WEIGHTS`` values that are URLs to those local
files and never downloads anything itself.

Weights directory: ``--weights-dir``, else ``$DCL_WEIGHTS_DIR``, else ``./weights``.
Where a URL is stored (:func:`local_path`):

* ``detectron2://<path>`` (detectron2's model zoo, ``https://dl.fbaipublicfiles.com/detectron2/<path>``)
  -> ``<weights-dir>/detectron2/<path>``, e.g. ``weights/detectron2/ImageNetPretrained/MSRA/R-50.pkl``;
* ``http(s)://<host>/<path>`` -> ``<weights-dir>/<host>/<path>``; the query string is not part of
  the name, and a path without a file name (``.../f/25b6.../?dl=1``) is stored as
  ``<path>/checkpoint.pth`` (detectron2 reads ``.pth`` files as PyTorch checkpoints, as the
  released DCL models are).

A download goes to ``<file>.part`` (resumed with an HTTP Range request after an interruption,
retried a few times), is checked against its ``Content-Length`` and, when given as
``URL#sha256=<hex>``, its SHA-256, and is then renamed into place; ``<file>.sha256`` records the
digest. Concurrent downloads of the same file wait for each other (a lock file).

Integrity (trust on first use): no URL of the paper pins a hash, so ``<file>.sha256`` records the
digest of the first download (or of a file found in place without a record) and every later use
(``dcl weights download`` of a present file, ``dcl train``'s ``MODEL.WEIGHTS``) checks the file
against it: a swapped or corrupted file is an error naming it. A download that is not a checkpoint
(neither a zip archive, as ``torch.save`` writes, nor a pickle: e.g. an HTML error page) is
refused. Pickled ``.pkl`` weights (detectron2's ImageNet and model-zoo files) are read only if they
hold plain data (:func:`check_plain_pickle`: numpy arrays, dicts, lists, scalars), since
unpickling anything else can run code.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import http.client
import logging
import io
import os
import pickle
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator, Optional

from dcl.io import InputError, atomic_write_text

__all__ = [
    "DETECTRON2_PREFIX",
    "DETECTRON2_BASE_URL",
    "ENV_WEIGHTS_DIR",
    "DEFAULT_WEIGHTS_DIR",
    "default_weights_dir",
    "is_remote",
    "split_checksum",
    "download_url",
    "local_path",
    "resolve",
    "download",
    "verify",
    "check_plain_pickle",
    "add_arguments",
    "run",
]

logger = logging.getLogger(__name__)

DETECTRON2_PREFIX = "detectron2://"
# What detectron2's own path handler maps detectron2:// to.
DETECTRON2_BASE_URL = "https://dl.fbaipublicfiles.com/detectron2/"
ENV_WEIGHTS_DIR = "DCL_WEIGHTS_DIR"
DEFAULT_WEIGHTS_DIR = "weights"
_NAMELESS_FILE = "checkpoint.pth"
_CHUNK = 1 << 20
_ATTEMPTS = 4
_TIMEOUT_S = 60


def default_weights_dir(weights_dir: str | os.PathLike | None = None) -> Path:
    """``weights_dir`` if given, else ``$DCL_WEIGHTS_DIR``, else ``./weights``."""
    return Path(weights_dir or os.environ.get(ENV_WEIGHTS_DIR) or DEFAULT_WEIGHTS_DIR)


def is_remote(spec: str) -> bool:
    """True for the weights specs this module stores locally (detectron2://, http://, https://)."""
    return spec.startswith((DETECTRON2_PREFIX, "http://", "https://"))


def split_checksum(spec: str) -> tuple[str, Optional[str]]:
    """Split ``URL#sha256=<hex>`` into the URL and the lower-case hex digest (or None)."""
    url, sep, fragment = spec.partition("#")
    if not sep:
        return spec, None
    match = re.fullmatch(r"sha256=([0-9a-fA-F]{64})", fragment)
    if not match:
        raise InputError(f"{spec}: the only URL fragment understood is #sha256=<64 hex digits>")
    return url, match.group(1).lower()


def download_url(spec: str) -> str:
    """The URL to fetch for a weights spec (detectron2:// expanded, checksum fragment removed)."""
    url, _ = split_checksum(spec)
    if url.startswith(DETECTRON2_PREFIX):
        return DETECTRON2_BASE_URL + url[len(DETECTRON2_PREFIX) :]
    return url


def local_path(spec: str, weights_dir: str | os.PathLike | None = None) -> Path:
    """Where ``spec`` lives in the weights directory (see the module docstring).

    Raises:
        InputError: not a detectron2:// or http(s):// URL, or a path that would leave the
            weights directory.
    """
    url, _ = split_checksum(spec)
    root = default_weights_dir(weights_dir)
    if url.startswith(DETECTRON2_PREFIX):
        host, path = "detectron2", url[len(DETECTRON2_PREFIX) :]
    elif url.startswith(("http://", "https://")):
        try:
            parsed = urllib.parse.urlsplit(url)
        except ValueError as error:  # e.g. an unclosed IPv6 bracket
            raise InputError(f"{spec}: not a valid URL ({error})") from None
        host, path = parsed.netloc, parsed.path
    else:
        raise InputError(f"{spec}: not a detectron2://, http:// or https:// URL")
    parts = [p for p in urllib.parse.unquote(path).split("/") if p]
    if not host or any(p in (".", "..") for p in parts) or "/" in host or host in (".", ".."):
        raise InputError(f"{spec}: cannot be stored under the weights directory (bad host or path)")
    if not parts or path.endswith("/") or "." not in parts[-1]:
        parts.append(_NAMELESS_FILE)
    return root.joinpath(host, *parts)


def resolve(spec: str, weights_dir: str | os.PathLike | None = None) -> str:
    """Map a ``MODEL.WEIGHTS`` value to a local file, without any network access.

    URLs (detectron2://, http(s)://) become their file in the weights directory; other values
    (local paths, "") are returned unchanged.

    Raises:
        InputError: the URL's file is not in the weights directory; the message gives the
            ``dcl weights download`` command to run where there is internet.
    """
    if not is_remote(spec):
        return spec
    path = local_path(spec, weights_dir)
    if path.is_file():
        verify(path)
        return str(path)
    root = default_weights_dir(weights_dir)
    raise InputError(
        f"MODEL.WEIGHTS {spec} is not in the weights directory {root} (looked for {path}); "
        f"on a machine with internet run: dcl weights download {spec} --weights-dir {root}"
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) while the block runs, and remove
    the file afterwards, so no lock file outlives its download. A waiter that got the lock of a
    file removed meanwhile takes the new one (its inode is no longer the path's)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(path, "a")
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            if os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        handle.close()  # releases the lock


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _record(path: Path, digest: str) -> None:
    atomic_write_text(_record_path(path), f"{digest}  {path.name}\n")


def verify(path: str | os.PathLike, *, record_if_missing: bool = True) -> None:
    """Check ``path`` against the SHA-256 in ``<path>.sha256`` (written when it was downloaded).

    Without a record, one is written now when ``record_if_missing`` (trust on first use).

    Raises:
        InputError: the file's digest differs from the record (swapped or corrupted), or the
            record is unreadable.
    """
    path = Path(path)
    record = _record_path(path)
    digest = _sha256(path)
    if not record.is_file():
        if record_if_missing:
            logger.info("%s: no digest recorded; recording sha256 %s (trust on first use)", path, digest)
            with contextlib.suppress(OSError):  # a read-only weights directory: use it unrecorded
                _record(path, digest)
        return
    try:
        recorded = record.read_text(encoding="utf-8").split()[0].lower()
    except (OSError, UnicodeDecodeError, IndexError):
        raise InputError(f"{record}: unreadable digest record of {path}; delete it to record the file again") from None
    if digest != recorded:
        raise InputError(
            f"{path}: SHA-256 {digest} differs from the one recorded when it was downloaded "
            f"({recorded}, in {record}): the file was changed or corrupted; download it again "
            "with `dcl weights download --force`"
        )


def _check_checkpoint_format(path: Path, url: str) -> None:
    """Refuse a download that is neither a zip archive (``torch.save``) nor a pickle."""
    with open(path, "rb") as f:
        head = f.read(4)
    # zip magic; pickle's PROTO opcode (protocol 2+, Python 2's cPickle and torch's legacy format).
    if head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
        return
    size = path.stat().st_size
    path.unlink()
    raise InputError(
        f"{url}: the download ({size} bytes, starting {head!r}) is not a checkpoint "
        "(neither a zip archive nor a pickle; an error page?); nothing stored"
    )


# What plain-data pickles (numpy arrays in dicts and lists) may refer to; nothing here runs code.
_PLAIN_PICKLE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # bytes in a protocol-2 pickle of Python 3
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "complex"),
    ("builtins", "bytearray"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


class _PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _PLAIN_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}")
        return super().find_class(module, name)


def check_plain_pickle(path: str | os.PathLike) -> None:
    """Read the pickle ``path`` allowing only plain data: dicts, lists, strings, numbers and numpy
    arrays (detectron2's ``.pkl`` weights). Python 2 pickles are read as detectron2 reads them.

    Raises:
        InputError: the pickle refers to anything else (it could run code when unpickled) or is
            not a readable pickle.
    """
    try:
        with open(path, "rb") as f:
            _PlainDataUnpickler(io.BufferedReader(f), encoding="latin1").load()
    except OSError as error:
        raise InputError(f"weights file {path} cannot be read: {error}") from None
    except Exception as error:  # UnpicklingError, EOFError, ValueError, ... from a bad file
        raise InputError(
            f"weights file {path} is refused: {error} (only plain data - numpy arrays, dicts, "
            "lists, numbers - is unpickled)"
        ) from None


def _fetch_into(url: str, part: Path) -> Optional[int]:
    """Append the rest of ``url`` to ``part`` (Range request when ``part`` has bytes).

    Returns:
        The expected total size in bytes, or None when the server does not say.
    """
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "dcl-pipeline (dcl weights download)"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            # Range not satisfiable: the partial file is stale or already complete; start over.
            part.unlink()
            return _fetch_into(url, part)
        raise
    with response:
        status = getattr(response, "status", 200)
        length = response.headers.get("Content-Length")
        if status == 206:
            total = offset + int(length) if length is not None else None
            mode = "ab"
        else:  # the server ignored the Range header: the body is the whole file
            total = int(length) if length is not None else None
            mode = "wb"
            offset = 0
        with open(part, mode) as out:
            done = offset
            progress = _progress(total, done, url)
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                done += len(chunk)
                progress(done)
            out.flush()
            os.fsync(out.fileno())
    return total


def _progress(total: Optional[int], start: int, url: str):
    """A callback showing the download's progress (:mod:`dcl.progress`)."""
    from dcl.progress import progress_bar, wanted

    if not wanted():
        return lambda done: None
    bar = progress_bar(total, url.rsplit("/", 1)[-1], "B", initial=start, unit_scale=True, leave=False)

    def update(done: int) -> None:
        bar.update(done - bar.n)
        if total is not None and done >= total:
            bar.close()

    return update


def download(spec: str, weights_dir: str | os.PathLike | None = None, *, force: bool = False) -> Path:
    """Download ``spec`` (``URL[#sha256=<hex>]``) into the weights directory, atomically.

    An existing file is kept (and checked when a digest is given) unless ``force``.

    Returns:
        The local path.

    Raises:
        InputError: unreachable host, HTTP error, truncated download after retries, or a
            checksum mismatch (the partial file is deleted in that case).
    """
    _, expected = split_checksum(spec)
    url = download_url(spec)
    if re.search(r"[\s\x00-\x1f\x7f]", url):  # urllib refuses them: nothing to retry
        raise InputError(f"{url!r}: a URL cannot contain spaces or control characters (write a space as %20)")
    dest = local_path(spec, weights_dir)
    part = dest.with_name(dest.name + ".part")
    with _locked(dest.with_name(dest.name + ".lock")):
        if dest.is_file() and not force:
            if expected and _sha256(dest) != expected:
                raise InputError(f"{dest} exists but its SHA-256 is not {expected}; delete it or pass --force")
            verify(dest)
            logger.info("%s: already present at %s", spec, dest)
            return dest
        if force:
            part.unlink(missing_ok=True)
        total = None
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                total = _fetch_into(url, part)
            except urllib.error.HTTPError as error:
                raise InputError(f"{url}: HTTP {error.code} {error.reason}") from None
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as error:
                reason = getattr(error, "reason", error)
                if attempt == _ATTEMPTS:
                    kept = (
                        f"; the partial file {part} is kept and the next run resumes it"
                        if part.is_file() and part.stat().st_size
                        else ""
                    )
                    raise InputError(
                        f"{url}: download failed after {attempt} attempts ({reason}){kept}. Is there internet here?"
                    ) from None
                logger.warning("%s: %s; retrying (%d/%d)", url, reason, attempt, _ATTEMPTS)
                time.sleep(min(2**attempt, 10))
                continue
            size = part.stat().st_size
            if total is None or size == total:
                break
            if attempt == _ATTEMPTS:
                raise InputError(f"{url}: got {size} of {total} bytes after {attempt} attempts; run again to resume")
            logger.warning("%s: got %d of %d bytes; resuming", url, size, total)
        digest = _sha256(part)
        if expected and digest != expected:
            part.unlink()
            raise InputError(f"{url}: SHA-256 {digest} does not match the expected {expected}; download deleted")
        _check_checkpoint_format(part, url)
        os.replace(part, dest)
        _record(dest, digest)
        logger.info("%s: %d bytes, sha256 %s -> %s", spec, dest.stat().st_size, digest, dest)
        return dest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    get = actions.add_parser("download", help="download checkpoints into the weights directory")
    get.add_argument(
        "specs", nargs="+", metavar="URL", help="detectron2://<path> or http(s)://... , optionally with #sha256=<hex>"
    )
    get.add_argument("--force", action="store_true", help="download again even if the file exists")
    where = actions.add_parser("path", help="print where each URL is (or would be) stored; no network")
    where.add_argument("specs", nargs="+", metavar="URL")
    for sub in (get, where):
        sub.add_argument(
            "--weights-dir",
            default=None,
            help=f"weights directory (default: ${ENV_WEIGHTS_DIR}, else ./{DEFAULT_WEIGHTS_DIR})",
        )


def run(args: argparse.Namespace) -> int:
    if args.action == "path":
        for spec in args.specs:
            print(local_path(spec, args.weights_dir))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for spec in args.specs:
        print(download(spec, args.weights_dir, force=args.force))
    return 0
