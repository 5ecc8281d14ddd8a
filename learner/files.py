"""Files that readers never see half-written: one home for the write-then-rename pattern."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replaced_atomically(path: str | os.PathLike[str], *, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; when the block succeeds it replaces `path` in one
    rename, when it fails it is removed. A reader (another replica, a resumed job) then sees the old
    file or the new one, never half of one, even after a kill or a full disk mid-write.

    The temporary name carries the process and thread, since replicas share a state directory. `mode`
    is set on the file before the rename (never wider than the caller asked, whatever the umask); to
    keep a secret unreadable while it is written, create the file with that mode (`os.open`).
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
