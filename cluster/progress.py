"""Progress bars on stderr (tqdm), so stdout keeps only the JSON summary."""
from __future__ import annotations

import sys
from contextlib import contextmanager

from tqdm import tqdm


@contextmanager
def progress_bar(total: int, desc: str, unit: str = "it", enabled: bool = True):
    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not enabled,
               mininterval=0.5, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()
