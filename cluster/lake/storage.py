"""Where the lake's files live: a local (or shared) folder, or an S3-compatible bucket.

``lake.uri`` (``MLOPS_LAKE__URI``) names the lake: a folder (default
``<MLOPS_HOME>/lake``) or ``s3://bucket/prefix``. A local lake is a ``Path`` and
every operation here is the plain ``os``/``pathlib`` one it always was (no extra
cost per commit). An S3 lake is an :class:`ObjectPath`: delta-rs opens its tables
with :func:`storage_options`, and our own file operations (data files we write
before committing them, single log entries, listings, sizes) go through pyarrow's
``S3FileSystem`` built from the same settings.

Credentials and endpoint come from the standard AWS variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL`` for a non-AWS server).
Commits are safe with several writers because delta-rs 1.x commits
``_delta_log/NNN.json`` with a put-if-absent (``If-None-Match: *``), which we ask for
explicitly (``conditional_put=etag``) so a library default cannot turn it off; the
server must refuse the second put of a key (AWS S3, MinIO, R2 and moto do).
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq

SCHEME = "s3://"
_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
        "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ALLOW_HTTP")


class ObjectPath:
    """``s3://bucket/key``: the few ``pathlib`` operations the lake uses."""
    __slots__ = ("uri",)

    def __init__(self, uri: str):
        uri = str(uri).rstrip("/")
        if not uri.startswith(SCHEME) or len(uri) <= len(SCHEME):
            raise ValueError(f"not an s3://bucket/prefix URI: {uri!r}")
        self.uri = uri

    def __truediv__(self, other) -> "ObjectPath":
        return ObjectPath(f"{self.uri}/{str(other).strip('/')}")

    @property
    def name(self) -> str:
        return self.uri.rsplit("/", 1)[-1]

    @property
    def parent(self) -> "ObjectPath":
        head = self.uri.rsplit("/", 1)[0]
        return ObjectPath(head) if len(head) > len(SCHEME) else self

    @property
    def key(self) -> str:
        """``bucket/key``: the path pyarrow's S3FileSystem takes."""
        return self.uri[len(SCHEME):]

    def resolve(self) -> "ObjectPath":
        return self

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"ObjectPath({self.uri!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, ObjectPath) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)


def location(path) -> "Path | ObjectPath":
    """``path`` as the lake's path type: ObjectPath for ``s3://``, else Path."""
    if isinstance(path, (ObjectPath, Path)):
        return path
    text = os.fspath(path)
    return ObjectPath(text) if text.startswith(SCHEME) else Path(text)


def is_remote(path) -> bool:
    return isinstance(path, ObjectPath) or str(path).startswith(SCHEME)


def storage_options(path) -> dict | None:
    """delta-rs ``storage_options`` for a table at ``path`` (None: a local table)."""
    if not is_remote(path):
        return None
    opts = {var: os.environ[var] for var in _ENV if os.environ.get(var)}
    if "AWS_REGION" not in opts and "AWS_DEFAULT_REGION" in opts:
        opts["AWS_REGION"] = opts["AWS_DEFAULT_REGION"]
    opts.pop("AWS_DEFAULT_REGION", None)
    if opts.get("AWS_ENDPOINT_URL", "").startswith("http://"):
        opts.setdefault("AWS_ALLOW_HTTP", "true")
    opts["conditional_put"] = "etag"  # commit = put-if-absent of the log entry
    return opts


def filesystem():
    """pyarrow's S3FileSystem with the same endpoint, region and credentials."""
    opts = storage_options(SCHEME + "x")
    return _s3(tuple(sorted(opts.items())))


@lru_cache(maxsize=4)
def _s3(items: tuple):
    from pyarrow.fs import S3FileSystem
    opts = dict(items)
    endpoint = opts.get("AWS_ENDPOINT_URL")
    kwargs = {"access_key": opts.get("AWS_ACCESS_KEY_ID"),
              "secret_key": opts.get("AWS_SECRET_ACCESS_KEY"),
              "session_token": opts.get("AWS_SESSION_TOKEN"),
              "region": opts.get("AWS_REGION")}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host.rstrip("/"), scheme=scheme)
    return S3FileSystem(**{k: v for k, v in kwargs.items() if v is not None})


def _key(path) -> str:
    return location(path).key


# -- file operations: os/pathlib on a folder, S3FileSystem on a bucket -----------
def read_bytes(path) -> bytes:
    """A small file's bytes; FileNotFoundError when absent."""
    if not is_remote(path):
        with open(path, "rb") as f:
            return f.read()
    try:
        with filesystem().open_input_stream(_key(path)) as f:
            return f.read()
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) or "not found" in str(exc).lower() \
                or "NoSuchKey" in str(exc):
            raise FileNotFoundError(str(path)) from None
        raise


def read_text(path) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes_atomic(path, data: bytes) -> None:
    """Replace the file at ``path`` with ``data``, all or nothing: a temporary file
    renamed over it locally; one PUT on S3 (an object appears whole or not at all)."""
    if not is_remote(path):
        import tempfile
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
    with filesystem().open_output_stream(_key(path)) as f:
        f.write(data)


def file_exists(path) -> bool:
    if not is_remote(path):
        return os.path.exists(path)
    from pyarrow.fs import FileType
    return filesystem().get_file_info(_key(path)).type == FileType.File


def listdir(path) -> list[str]:
    """Names directly under a folder ([] when it does not exist)."""
    if not is_remote(path):
        try:
            return os.listdir(path)
        except FileNotFoundError:
            return []
    from pyarrow.fs import FileSelector
    infos = filesystem().get_file_info(FileSelector(_key(path), allow_not_found=True))
    return [i.base_name for i in infos]


def subfolders(path) -> list[str]:
    """Names of the folders directly under ``path``."""
    if not is_remote(path):
        root = Path(path)
        return [p.name for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    from pyarrow.fs import FileSelector, FileType
    infos = filesystem().get_file_info(FileSelector(_key(path), allow_not_found=True))
    return [i.base_name for i in infos if i.type == FileType.Directory]


def file_sizes(path, skip: str = "_delta_log", suffix: str = ".parquet") -> list[int]:
    """Sizes of the ``suffix`` files anywhere under ``path`` outside ``skip``."""
    if not is_remote(path):
        out = []
        for root, dirs, files in os.walk(path):
            dirs[:] = [d for d in dirs if d != skip]
            out += [os.path.getsize(os.path.join(root, f)) for f in files if f.endswith(suffix)]
        return out
    from pyarrow.fs import FileSelector, FileType
    base = _key(path)
    infos = filesystem().get_file_info(FileSelector(base, recursive=True, allow_not_found=True))
    return [i.size for i in infos if i.type == FileType.File and i.path.endswith(suffix)
            and not i.path[len(base):].lstrip("/").startswith(skip + "/")]


def delete(path) -> None:
    """Delete a file; nothing when it is absent."""
    if not is_remote(path):
        Path(path).unlink(missing_ok=True)
        return
    try:
        filesystem().delete_file(_key(path))
    except FileNotFoundError:
        pass


def write_parquet(table, path, **kwargs) -> int:
    """``pq.write_table`` to ``path`` (parents made); returns the file's size."""
    if not is_remote(path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, **kwargs)
        return path.stat().st_size
    fs = filesystem()
    pq.write_table(table, _key(path), filesystem=fs, **kwargs)
    return fs.get_file_info(_key(path)).size


def parquet_file(path) -> pq.ParquetFile:
    """One data file opened for reading (its footer read), on either kind of storage."""
    if not is_remote(path):
        return pq.ParquetFile(str(path))
    return pq.ParquetFile(_key(path), filesystem=filesystem())


def dataset(paths, **kwargs) -> ds.Dataset:
    """``ds.dataset`` over data file paths (a list, or one path) of either kind."""
    one = isinstance(paths, (str, Path, ObjectPath))
    items = [paths] if one else list(paths)
    if not items or not is_remote(items[0]):
        return ds.dataset(str(paths) if one else items, **kwargs)
    keys = [_key(p) for p in items]
    return ds.dataset(keys[0] if one else keys, filesystem=filesystem(), **kwargs)
