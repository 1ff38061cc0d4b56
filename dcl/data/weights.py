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

Transport is pooch's HTTP downloader (requests; a :mod:`dcl.progress` bar on a terminal). Around
it: a download goes to ``<file>.part``, locked while it is written so that concurrent downloads of
the same file wait for each other (no lock file to leave behind); a dropped connection or a short
body is resumed with an HTTP Range request (a few attempts; an interrupted run keeps the partial
file and the next run resumes it); a ``URL#sha256=<hex>`` is checked; then the file is renamed into
place and ``<file>.sha256`` records its digest. A URL with spaces fails at once.

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
import io
import logging
import os
import pickle
import re
import time
import urllib.parse
from pathlib import Path
from typing import BinaryIO, Optional

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
_CHUNK = 1 << 16  # what a dropped connection loses at most (the resume starts after it)
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


def _sha256(path: Path) -> str:
    import pooch

    return pooch.file_hash(str(path), alg="sha256")


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


def _fetch(url: str, part: BinaryIO, path: Path) -> None:
    """Download ``url`` into the open file ``part`` (at ``path``) with pooch's HTTP downloader, a
    :mod:`dcl.progress` bar counting the bytes written. A few attempts with back-off, each resuming
    where the last stopped (HTTP Range request; a server that ignores it sends the whole file, which
    replaces the partial one)."""
    import pooch
    import requests
    from tqdm.utils import CallbackIOWrapper

    from dcl.progress import progress_bar

    expected = {}
    with progress_bar(None, path.name.removesuffix(".part"), "B", unit_scale=True) as bar:

        def on_response(response, *args, **kwargs):  # requests' hook, before the body is read
            if response.status_code == 200:
                part.truncate(0)
            bar.n = os.fstat(part.fileno()).st_size
            if response.headers.get("Content-Length"):
                bar.total = expected["size"] = bar.n + int(response.headers["Content-Length"])

        for attempt in range(1, _ATTEMPTS + 1):
            offset = os.fstat(part.fileno()).st_size
            headers = {"User-Agent": "dcl-pipeline", **({"Range": f"bytes={offset}-"} if offset else {})}
            fetch = pooch.HTTPDownloader(
                chunk_size=_CHUNK, headers=headers, timeout=_TIMEOUT_S, hooks={"response": on_response}
            )
            expected.clear()
            try:
                fetch(url, CallbackIOWrapper(bar.update, part, "write"), None)
                size = os.fstat(part.fileno()).st_size
                if expected.get("size", size) == size:
                    return
                reason = f"got {size} of {expected['size']} bytes"
            except requests.HTTPError as error:
                if error.response.status_code != 416 or not offset:
                    raise InputError(f"{url}: HTTP {error.response.status_code} {error.response.reason}") from None
                part.truncate(0)  # Range not satisfiable: the partial file is stale; start over
                reason = "HTTP 416"
                continue
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as error:
                reason = getattr(error.args[0], "reason", error) if error.args else error  # urllib3's cause
            except requests.RequestException as error:  # e.g. an invalid URL: nothing to retry
                raise InputError(f"{url}: {error}") from None
            if attempt < _ATTEMPTS:
                logger.warning("%s: %s; retrying (%d/%d)", url, reason, attempt, _ATTEMPTS)
                time.sleep(min(2**attempt, 10))
    size = os.fstat(part.fileno()).st_size
    kept = f"; the partial file {path} ({size} bytes) is kept and the next run resumes it" if size else ""
    raise InputError(f"{url}: download failed after {_ATTEMPTS} attempts ({reason}){kept}. Is there internet here?")


def _open_locked(part: Path, dest: Path, force: bool) -> Optional[BinaryIO]:
    """``part`` open for appending and locked (so there is no lock file to leave behind), or None
    when ``dest`` is present (perhaps from a concurrent download that this one waited for)."""
    while True:
        if dest.is_file() and not force:
            return None
        handle = open(part, "a+b")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("%s: waiting for another download of it", dest)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(handle.fileno()).st_ino == os.stat(part).st_ino:
                return handle
        handle.close()  # the other download renamed or deleted that file: look again
        force = False  # ... and what it stored is as fresh as a forced download


def download(spec: str, weights_dir: str | os.PathLike | None = None, *, force: bool = False) -> Path:
    """Download ``spec`` (``URL[#sha256=<hex>]``) into the weights directory, atomically, and return
    its path. An existing file is kept (and checked) unless ``force``.

    Raises:
        InputError: a URL with spaces, an HTTP error, an unreachable host or a truncated download
            after retries (a partial file is kept to resume), a checksum mismatch or a download
            that is not a checkpoint (deleted).
    """
    _, expected = split_checksum(spec)
    url = download_url(spec)
    if re.search(r"[\s\x00-\x1f\x7f]", url):  # refused at once: nothing to retry
        raise InputError(f"{url!r}: a URL cannot contain spaces or control characters (write a space as %20)")
    dest = local_path(spec, weights_dir)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    handle = _open_locked(part, dest, force)
    if handle is None:
        if expected and _sha256(dest) != expected:
            raise InputError(f"{dest} exists but its SHA-256 is not {expected}; delete it or pass --force")
        verify(dest)
        logger.info("%s: already present at %s", spec, dest)
        return dest
    logger.info("%s: downloading to %s", url, dest)
    with handle:
        try:
            if force:
                handle.truncate(0)
            _fetch(url, handle, part)
            os.fsync(handle.fileno())
        except BaseException as error:  # an error, Ctrl-C: a partial file is kept to resume, an empty one not
            if not (size := os.fstat(handle.fileno()).st_size):
                part.unlink(missing_ok=True)
            elif isinstance(error, KeyboardInterrupt):
                logger.warning("%s: interrupted; the partial file %s (%d bytes) is kept to resume", url, part, size)
            raise
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
        try:
            print(download(spec, args.weights_dir, force=args.force))
        except KeyboardInterrupt:  # Ctrl-C: the log says what is kept
            return 130
    return 0
