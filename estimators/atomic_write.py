"""Cache files written so that no reader sees half a file: write to a temporary name private
to this process and thread, then rename it into place (atomic on POSIX). An interrupted write
(Ctrl-C, `estimators.progress.Cancelled`) leaves no temporary behind, and a read-only or full
disk only costs recomputation (the write is skipped)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` to fill a temporary file beside `path`, then rename it to `path`.
    OSError (read-only or full disk) is swallowed; any other exception propagates after the
    temporary is removed."""
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        tmp.replace(path)
    except OSError:
        pass
    finally:
        if tmp.exists():
            try:
                tmp.unlink()
            except OSError:
                pass
