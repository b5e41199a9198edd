"""Static assets of the console: its own CSS/JS and Plotly.js from the ``plotly`` wheel.

Each asset's URL carries a digest of its content (``/console/static/api.js?v=3f2a...``),
so a browser may keep it for good (``immutable``) and never asks again within a
session: a page after the first transfers only its HTML and its API answers.
Plotly.js is 4.8 MB; it is gzipped once per process (1.5 MB, ~0.15 s) rather than on
every request, which is what a compressing middleware would do.
"""
from __future__ import annotations

import gzip
import hashlib
import mimetypes
import threading
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request, Response
from fastapi.responses import PlainTextResponse

STATIC_DIR = Path(__file__).with_name("static")
PREFIX = "/console/static"
PLOTLY_NAME = "vendor/plotly.min.js"
_COMPRESSIBLE = (".js", ".css", ".svg", ".json", ".html")
_MIN_GZIP = 1024
_FOREVER = "public, max-age=31536000, immutable"


def plotly_path() -> Path:
    """Plotly.js as the installed ``plotly`` package ships it (no CDN, no Node)."""
    import plotly
    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.exists():
        raise RuntimeError(f"plotly {plotly.__version__} ships no {path}; reinstall plotly")
    return path


@dataclass
class _Asset:
    path: Path
    media_type: str
    digest: str
    _raw: bytes | None = None
    _gz: bytes | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def body(self, want_gzip: bool) -> tuple[bytes, bool]:
        with self._lock:
            if self._raw is None:
                self._raw = self.path.read_bytes()
            if not want_gzip or len(self._raw) < _MIN_GZIP or \
                    self.path.suffix not in _COMPRESSIBLE:
                return self._raw, False
            if self._gz is None:
                self._gz = gzip.compress(self._raw, compresslevel=6, mtime=0)
            return self._gz, True


class Assets:
    """Every file under ``static/`` plus Plotly.js, by name, with versioned URLs."""

    def __init__(self, static_dir: Path = STATIC_DIR):
        self._assets: dict[str, _Asset] = {}
        for path in sorted(static_dir.rglob("*")):
            if path.is_file():
                self._add(path.relative_to(static_dir).as_posix(), path)
        self._add(PLOTLY_NAME, plotly_path())

    def _add(self, name: str, path: Path) -> None:
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if path.suffix == ".js":
            media = "text/javascript"
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        self._assets[name] = _Asset(path, media, digest)

    def url(self, name: str) -> str:
        """The versioned URL of an asset (a template's ``asset('api.js')``)."""
        try:
            return f"{PREFIX}/{name}?v={self._assets[name].digest}"
        except KeyError:
            raise KeyError(f"no console asset {name!r}") from None

    def names(self) -> list[str]:
        return sorted(self._assets)

    def import_map(self) -> dict:
        """Maps every module's plain URL to its versioned one, so that the modules'
        own relative ``import``s also load the current, cacheable copy."""
        return {"imports": {f"{PREFIX}/{n}": self.url(n) for n in self.names()
                            if n.endswith(".js") and n != PLOTLY_NAME}}

    def respond(self, name: str, request: Request) -> Response:
        asset = self._assets.get(name)
        if asset is None:
            return PlainTextResponse(f"no console asset {name!r}", status_code=404)
        etag = f'"{asset.digest}"'
        # Only the versioned URL may be kept for good; a bare one is revalidated.
        cache = _FOREVER if request.query_params.get("v") == asset.digest else "no-cache"
        headers = {"ETag": etag, "Cache-Control": cache, "Vary": "Accept-Encoding"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        body, zipped = asset.body("gzip" in request.headers.get("accept-encoding", ""))
        if zipped:
            headers["Content-Encoding"] = "gzip"
        return Response(body, media_type=asset.media_type, headers=headers)
