"""Objects as files under one directory (`LocalStore`): the embedded default when S3_BUCKET is unset.

Every file-system failure is raised as a classified `StepError` (`classify_os_error`): a missing
file gives up on the order, a full disk waits for space, a permission fault names the data
directory. Writes are atomic renames and copies are hard links, so a reader never sees a torn file.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fulfilment.errors import ErrorClass, StepError
from fulfilment.storage.base import check_expiry, check_size, invalid_key, validate_key

log = logging.getLogger(__name__)

_DATA_DIR_HINT = "check the owner and mode of the data directory (HEALER_DATA_DIR)"
_OS_CLASSES: dict[int, tuple[ErrorClass, str]] = {
    errno.ENOENT: (ErrorClass.S3_MISSING_FILE, "object not found"),
    errno.ENOTDIR: (ErrorClass.S3_MISSING_FILE, "object not found"),
    errno.ENOSPC: (ErrorClass.RESOURCES, "no space left on device: free space or grow the volume"),
    errno.EDQUOT: (ErrorClass.RESOURCES, "disk quota exceeded: free space or raise the quota"),
    errno.EACCES: (ErrorClass.S3_AUTH, f"permission denied: {_DATA_DIR_HINT}"),
    errno.EPERM: (ErrorClass.S3_AUTH, f"operation not permitted: {_DATA_DIR_HINT}"),
    errno.EROFS: (ErrorClass.S3_AUTH, f"read-only file system: {_DATA_DIR_HINT}"),
    errno.EISDIR: (ErrorClass.BAD_INPUT, "key names a directory of the store"),
    errno.EEXIST: (ErrorClass.BAD_INPUT, "key runs through a file of the store"),
    errno.ENAMETOOLONG: (ErrorClass.BAD_INPUT, "name too long for the file system"),
}


def classify_os_error(exc: OSError, target: str) -> StepError:
    """Turn a file-system error into a StepError whose message starts with `target`."""
    # Anything unlisted (EIO, EMFILE, ENOMEM) is the machine's trouble: wait for disk/memory checks.
    error_class, hint = _OS_CLASSES.get(
        exc.errno or 0, (ErrorClass.RESOURCES, f"file system error: {exc.strerror or exc}")
    )
    return StepError(error_class, f"{target}: {hint} ({errno.errorcode.get(exc.errno or 0, 'OSError')})")


@contextmanager
def _os_errors(target: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise classify_os_error(exc, target) from exc


class LocalStore:
    """Objects as files under one directory; the embedded default when S3_BUCKET is unset."""

    kind: str = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"LocalStore(root={str(self.root)!r})"

    def path(self, key: str) -> Path:
        """The file for `key`: validated, resolved, and inside the root even through symlinks."""
        validate_key(key)
        try:
            candidate = (self.root / key).resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
            raise invalid_key(key, exc) from exc
        if candidate == self.root or not candidate.is_relative_to(self.root):
            raise invalid_key(key, f"resolves outside {self.root}")
        return candidate

    def exists(self, key: str) -> bool:
        path = self.path(key)
        with _os_errors(f"exists {path}"):
            return _regular_size(path) is not None

    def size(self, key: str) -> int:
        path = self.path(key)
        target = f"size {path}"
        with _os_errors(target):
            size = _regular_size(path)
        if size is None:
            raise StepError(ErrorClass.S3_MISSING_FILE, f"{target}: object not found")
        return size

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        path = self.path(key)
        target = f"get {path}"
        with _os_errors(target):
            if path.is_dir():  # S3 has no directories: "orders/1" is simply not an object
                raise StepError(ErrorClass.S3_MISSING_FILE, f"{target}: object not found")
            with path.open("rb") as handle:
                check_size(target, os.fstat(handle.fileno()).st_size, max_bytes)
                return handle.read()

    def put(self, key: str, data: bytes, content_type: str) -> None:
        # content_type is not kept: the HTTP app serving local files derives it from the name.
        path = self.path(key)
        with _os_errors(f"put {path}"):
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, data)

    def copy(self, src_key: str, dst_key: str) -> bool:
        src, dst = self.path(src_key), self.path(dst_key)
        target = f"copy {src} -> {dst}"
        with _os_errors(target):
            src_size = _regular_size(src)
            if src_size is None:
                raise StepError(ErrorClass.S3_MISSING_FILE, f"{target}: source object not found")
            if _regular_size(dst) == src_size:
                log.debug("%s: destination already present with the same size, not copied", target)
                return False
            dst.parent.mkdir(parents=True, exist_ok=True)
            _link_atomically(src, dst)
        log.info("%s: copied %d bytes", target, src_size)
        return True

    def delete(self, key: str) -> None:
        path = self.path(key)
        with _os_errors(f"delete {path}"):
            path.unlink(missing_ok=True)

    def download_url(self, key: str, expires_seconds: int) -> str | None:
        validate_key(key)
        check_expiry(expires_seconds)
        return None  # the HTTP app streams local files itself


def _regular_size(path: Path) -> int | None:
    """Size of a regular file; None when there is none (absent, or a directory)."""
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to a hidden temp file beside `path`, fsync it and rename it over `path`: readers
    see the old file or the new one, never a torn write, even across a crash. OSError is raised as is."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _link_atomically(src: Path, dst: Path) -> None:
    # A hard link shares the inode, which is safe because every write goes through os.replace:
    # rewriting either name later makes a new inode and leaves the other untouched.
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}.tmp")
    try:
        try:
            os.link(src, tmp)
        except OSError:  # across devices, or a file system without hard links
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
