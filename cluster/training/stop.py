"""Stopping a training run from outside: another thread (``stop_run``) or another
process (``python -m jobs.train --stop RUN_ID`` writes a stop file)."""
from __future__ import annotations

import threading
from pathlib import Path

_active: dict[str, "StopFlag"] = {}
_lock = threading.Lock()


class StopFlag:
    """An Event that is also set by the presence of ``<runs_dir>/<run_id>.stop``."""

    def __init__(self, run_id: str, runs_dir: Path | None = None):
        self.run_id = run_id
        self._event = threading.Event()
        self._file = Path(runs_dir) / f"{run_id}.stop" if runs_dir is not None else None

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        if not self._event.is_set() and self._file is not None and self._file.exists():
            self._event.set()
        return self._event.is_set()

    def __enter__(self) -> "StopFlag":
        with _lock:
            _active[self.run_id] = self
        return self

    def __exit__(self, *exc) -> None:
        with _lock:
            _active.pop(self.run_id, None)
        if self._file is not None:
            self._file.unlink(missing_ok=True)


def stop_run(run_id: str, runs_dir: Path | None = None) -> bool:
    """Ask a run to stop. True when the run is in this process; otherwise a stop
    file is left for a run in another process (when ``runs_dir`` is given)."""
    with _lock:
        flag = _active.get(run_id)
    if flag is not None:
        flag.set()
        return True
    if runs_dir is not None:
        Path(runs_dir).mkdir(parents=True, exist_ok=True)
        (Path(runs_dir) / f"{run_id}.stop").touch()
    return False
