"""Opening shards as byte streams: local files, ``http(s)://`` and ``pipe:`` URLs, fsspec URLs.

Large data sets live in object storage, so a shard may be named by a URL instead of a path:

- ``http://`` / ``https://`` (and ``file://``): opened with WebDataset's ``gopen`` (``curl``
  in a subprocess; its exit status is checked when the stream ends);
- ``pipe:COMMAND``: the standard output of a shell command, e.g.
  ``pipe:aws s3 cp s3://bucket/shard-000000.tar -`` or ``pipe:gsutil cat gs://b/s.tar``
  (WebDataset's convention; the command's exit status is checked);
- any other ``scheme://`` (``s3://``, ``gs://``, ``az://``, ...): opened with ``fsspec`` when
  it and the scheme's backend (``s3fs``, ``gcsfs``, ``adlfs``) are installed; otherwise
  :func:`check_backend` raises a ``ValueError`` naming the package to install.

A URL pattern is brace-expanded (``shard-{000000..004999}.tar``) but never globbed: a remote
set cannot be listed. :func:`iter_tar_groups` streams a shard as groups of tar members and
re-opens a remote stream that fails mid-way up to ``retries`` times, waiting
``backoff * 2**attempt`` seconds before attempt ``attempt + 1``; the groups already delivered
are read again but not delivered twice. Local files are read once (a damaged file is damaged
on every read).

Example:
    >>> is_url("pipe:cat a.tar"), is_url("https://host/a.tar"), is_url("data/a.tar")
    (True, True, False)
"""

from __future__ import annotations

import contextlib
import os
import re
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from gradharmony.data.decode import SampleError

#: Default number of re-opens of a remote shard whose stream fails, and the first wait (s).
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 2.0
#: Schemes opened by WebDataset's ``gopen``; every other ``scheme://`` goes to fsspec.
GOPEN_SCHEMES = ("pipe", "http", "https", "file")
#: The fsspec backend package of common object-storage schemes (for error messages).
FSSPEC_BACKENDS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs",
                   "abfs": "adlfs", "abfss": "adlfs", "hf": "huggingface_hub"}
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(path: str | os.PathLike) -> bool:
    """True for ``pipe:`` commands and ``scheme://`` URLs (streamed, never globbed)."""
    path = str(path)
    return path.startswith("pipe:") or bool(_URL.match(path))


def url_scheme(url: str) -> str:
    """``"pipe"`` for a ``pipe:`` command, else the lower-case scheme of a URL.

    Example:
        >>> url_scheme("S3://bucket/a.tar"), url_scheme("pipe:gsutil cat gs://b/a.tar")
        ('s3', 'pipe')
    """
    return "pipe" if url.startswith("pipe:") else url.split("://", 1)[0].lower()


def check_backend(url: str) -> None:
    """Raise ``ValueError`` naming the package to install when ``url`` cannot be opened here.

    Example:
        >>> check_backend("https://host/a.tar")  # gopen (curl): nothing to install
        >>> check_backend("nosuchscheme://a.tar")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: shard URL 'nosuchscheme://a.tar': ...
    """
    scheme = url_scheme(url)
    if scheme in GOPEN_SCHEMES:
        return
    package = FSSPEC_BACKENDS.get(scheme)
    try:
        import fsspec
    except ImportError:
        need = "fsspec" + (f" {package}" if package else " and the scheme's fsspec backend")
        raise ValueError(f"shard URL {url!r}: {scheme}:// is read through fsspec, which is not "
                         f"installed (pip install {need}), or use a pipe: URL such as "
                         f"'pipe:aws s3 cp s3://bucket/shard.tar -'") from None
    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError as exc:
        raise ValueError(f"shard URL {url!r}: fsspec's {scheme}:// backend is not installed "
                         f"(pip install {package or 'its backend'}): {exc}") from None
    except ValueError:
        raise ValueError(f"shard URL {url!r}: fsspec knows no {scheme}:// protocol") from None


def open_stream(path: str | os.PathLike):
    """A binary stream of a shard: a local file, a ``gopen`` stream, or an fsspec file."""
    path = str(path)
    if not is_url(path):
        return open(path, "rb")
    if url_scheme(path) in GOPEN_SCHEMES:
        from webdataset.gopen import gopen

        return gopen(path, "rb")
    check_backend(path)
    import fsspec

    return fsspec.open(path, "rb").open()


def _close_quietly(stream) -> None:
    proc = getattr(stream, "proc", None)  # a gopen Pipe: stop the command, do not wait on it
    if proc is not None and proc.poll() is None:
        proc.kill()
    with contextlib.suppress(Exception):  # abandoned: its closing error does not matter
        stream.close()


def _exit_note(stream) -> str:
    """The exit status of a failed ``gopen`` command (curl, ``pipe:``), when it has one."""
    proc = getattr(stream, "proc", None)
    if proc is None:
        return ""
    try:
        status = proc.wait(timeout=1.0)
    except Exception:  # noqa: BLE001 - still running: it is killed when the stream is closed
        return ""
    return f" (command exit status {status})" if status else ""


class _StreamFailure(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _read_groups(path: str, remote: bool) -> Iterator[tuple[str, dict[str, bytes]]]:
    """One pass over a shard; raises ``_StreamFailure`` when it does not open or breaks."""
    stream, members = None, 0
    key, files = None, {}
    try:
        stream = open_stream(path)
        # a gopen Pipe raises as soon as it sees a failed exit status, dropping what the
        # command wrote before: read its output to the end, check the status on close
        raw = stream.stream if getattr(stream, "proc", None) is not None else stream
        with tarfile.open(fileobj=raw, mode="r|*") as tar:
            for member in tar:
                members += 1
                if not member.isfile():
                    continue
                dirname, base = os.path.split(member.name)
                if "." not in base:
                    continue
                stem, ext = base.split(".", 1)
                k = os.path.join(dirname, stem) if dirname else stem
                f = tar.extractfile(member)
                data = f.read() if f is not None else b""
                if len(data) != member.size:
                    raise tarfile.ReadError(f"member {member.name} is cut short")
                if k != key:
                    if key is not None:
                        yield key, files
                    key, files = k, {}
                files[ext.lower()] = data
        if remote:  # read the tar's end padding, so the command exits normally
            while raw.read(1 << 16):
                pass
        done, stream = stream, None
        done.close()  # a pipe's exit status is checked here
    except Exception as exc:  # noqa: BLE001 - any failure of one shard is counted
        reason = "truncated_tar" if members else "unreadable_shard"
        raise _StreamFailure(reason, f"{type(exc).__name__}: {exc}{_exit_note(stream)}"
                             ) from None
    finally:
        if stream is not None:
            _close_quietly(stream)
    if key is not None:
        yield key, files


def iter_tar_groups(path: str | Path, *, retries: int = 0, backoff: float = DEFAULT_BACKOFF,
                    on_retry: Callable[[str], None] | None = None
                    ) -> Iterator[tuple[str, dict[str, bytes]] | SampleError]:
    """Stream a tar shard as ``(key, {extension: bytes})`` groups of consecutive members.

    A shard that does not open (or holds no tar member) yields one
    ``SampleError("unreadable_shard")``; a damaged or cut stream yields the complete groups
    before the damage, then one ``SampleError("truncated_tar")`` (instead of raising). A
    remote shard (:func:`is_url`) is first re-opened up to ``retries`` times, after
    ``backoff * 2**attempt`` seconds, calling ``on_retry(message)`` each time; its groups are
    delivered once.

    Example:
        >>> import io, tempfile
        >>> d = tempfile.mkdtemp(); p = os.path.join(d, "s.tar")
        >>> with tarfile.open(p, "w") as tar:
        ...     for name, data in [("a.txt", b"hi"), ("a.json", b"{}"), ("b.txt", b"yo")]:
        ...         info = tarfile.TarInfo(name); info.size = len(data)
        ...         tar.addfile(info, io.BytesIO(data))
        >>> [(k, sorted(f)) for k, f in iter_tar_groups(p)]
        [('a', ['json', 'txt']), ('b', ['txt'])]
        >>> [(k, sorted(f)) for k, f in iter_tar_groups(f"pipe:cat {p}")]
        [('a', ['json', 'txt']), ('b', ['txt'])]
        >>> [e.reason for e in iter_tar_groups(os.path.join(d, "missing.tar"))]
        ['unreadable_shard']
    """
    path = str(path)
    remote = is_url(path)
    attempts = 1 + (max(0, int(retries)) if remote else 0)
    delivered = 0
    failure = None
    for attempt in range(attempts):
        if attempt:
            if on_retry is not None:
                on_retry(f"{path}: {failure}")
            time.sleep(backoff * 2 ** (attempt - 1))
        seen = 0
        try:
            for group in _read_groups(path, remote):
                seen += 1
                if seen > delivered:
                    delivered = seen
                    yield group
            return
        except _StreamFailure as exc:
            failure = exc
    reason = "truncated_tar" if delivered else failure.reason
    yield SampleError(reason, f"{path}: {failure}")
