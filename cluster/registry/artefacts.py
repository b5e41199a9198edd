"""Model artefacts in the libraries' own data formats: never a pickle.

A model is stored as a directory: the files its class writes (LightGBM's text
model, XGBoost's UBJSON, a torch ``state_dict``, ``.npz`` arrays, JSON) and a
``manifest.json`` that names the class, holds its JSON state and the sha256 of
every file. Loading reads the manifest as JSON, resolves the class only under
trusted module prefixes (``registry.model_modules``, default ``cluster.models``),
checks every listed file's hash and hands the directory to the class's
``load_artefacts``, which reads arrays with ``allow_pickle=False`` and tensors with
``torch.load(weights_only=True)``. So a planted pickle -- a ``model.pkl``, or a
pickle under a file name the model reads -- is refused, never executed.

A class takes part by defining::

    def save_artefacts(self, directory: Path) -> dict      # writes files, returns JSON state
    @classmethod
    def load_artefacts(cls, directory: Path, state: dict)  # -> instance

Models made of models (rolling steps, ensemble members) store each part with
:func:`save_model` in a sub-directory and read it back with :func:`load_model`.
"""
from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Iterable

import numpy as np

from cluster.errors import MlopsError

FORMAT = 1
MANIFEST = "manifest.json"
DEFAULT_TRUSTED = ("cluster.models",)


class ArtefactError(MlopsError):
    """A model directory cannot be written or read safely (untrusted class, a file that
    is not in a library format, a file that differs from its manifest)."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_sha256(directory: Path) -> str:
    """One hash of every file under ``directory`` (relative paths and contents)."""
    directory = Path(directory)
    h = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        h.update(path.relative_to(directory).as_posix().encode())
        h.update(b"\0")
        h.update(file_sha256(path).encode())
        h.update(b"\n")
    return h.hexdigest()


def class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def save_model(model, directory: Path) -> dict:
    """Write ``model`` under ``directory`` (created; must be empty); returns the manifest."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        raise ArtefactError(f"{directory} is not empty")
    cls = type(model)
    if not callable(getattr(model, "save_artefacts", None)) or \
            not callable(getattr(cls, "load_artefacts", None)):
        raise ArtefactError(f"{class_path(cls)} has no library-format writer "
                            "(save_artefacts/load_artefacts); it cannot be registered")
    state = model.save_artefacts(directory)
    files = {p.relative_to(directory).as_posix(): file_sha256(p)
             for p in sorted(directory.rglob("*")) if p.is_file()}
    if MANIFEST in files:
        raise ArtefactError(f"{class_path(cls)}.save_artefacts wrote {MANIFEST} itself")
    manifest = {"format": FORMAT, "class": class_path(cls), "state": state, "files": files}
    try:
        text = json.dumps(manifest, indent=1, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise ArtefactError(f"{class_path(cls)}'s state is not JSON: {exc}") from None
    (directory / MANIFEST).write_text(text)
    return manifest


def read_manifest(directory: Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        found = sorted(p.name for p in Path(directory).iterdir()) if Path(directory).is_dir() \
            else []
        raise ArtefactError(f"{directory} holds no {MANIFEST} (found {found[:5]}): not a "
                            "model in library formats; a pickled model is never loaded")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtefactError(f"{path} is not JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtefactError(f"{path}: unknown artefact format {manifest.get('format')!r}"
                            if isinstance(manifest, dict) else f"{path}: not a manifest")
    return manifest


def resolve_class(path: str, trusted: Iterable[str] = DEFAULT_TRUSTED) -> type:
    """``module:Qualname`` -> the class, only under a trusted module prefix."""
    module, sep, qualname = str(path).partition(":")
    prefixes = tuple(trusted)
    if not sep or not any(module == p or module.startswith(p + ".") for p in prefixes):
        raise ArtefactError(f"model class {path!r} is not under a trusted module "
                            f"{list(prefixes)} (setting registry.model_modules); refusing it")
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ArtefactError(f"model class {path!r} cannot be found: {exc}") from None
    if not isinstance(obj, type) or not callable(getattr(obj, "load_artefacts", None)):
        raise ArtefactError(f"{path!r} is not a model class with load_artefacts")
    return obj


def verify_files(directory: Path, manifest: dict) -> None:
    directory = Path(directory)
    for rel, expected in (manifest.get("files") or {}).items():
        path = directory / rel
        if not path.resolve().is_relative_to(directory.resolve()):
            raise ArtefactError(f"manifest names {rel!r}, outside the model directory")
        if not path.is_file():
            raise ArtefactError(f"{directory}: {rel} is missing")
        if file_sha256(path) != expected:
            raise ArtefactError(f"{directory}: {rel} differs from its manifest hash; "
                                "refusing to load it")


def load_model(directory: Path, trusted: Iterable[str] = DEFAULT_TRUSTED):
    """Rebuild the model stored under ``directory`` (see the module docstring)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    trusted = tuple(trusted)
    cls = resolve_class(manifest.get("class", ""), trusted)
    verify_files(directory, manifest)
    try:
        return cls.load_artefacts(directory, manifest.get("state") or {}, trusted=trusted)
    except ArtefactError:
        raise
    except Exception as exc:  # e.g. torch's weights_only refusal of a planted pickle
        raise ArtefactError(f"{directory}: {manifest['class']} could not read its artefacts: "
                            f"{type(exc).__name__}: {str(exc)[:300]}") from exc


def model_files(model, prefix: str = "model") -> dict[str, bytes]:
    """``model`` in library formats as ``{"<prefix>/<relative path>": bytes}``: for
    moving it between processes or into a Tune checkpoint without a pickle."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, Path(tmp) / prefix)
        return {p.relative_to(tmp).as_posix(): p.read_bytes()
                for p in sorted(Path(tmp).rglob("*")) if p.is_file()}


def write_files(directory: Path, files: dict[str, bytes]) -> None:
    """Write :func:`model_files` output (and other named blobs) under ``directory``."""
    root = Path(directory).resolve()
    for rel, blob in files.items():
        path = (root / rel).resolve()
        if not path.is_relative_to(root):
            raise ArtefactError(f"file name {rel!r} points outside {directory}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)


# --------------------------------------------------------------------------- helpers
def save_arrays(path: Path, **arrays) -> None:
    """Plain numeric arrays (no object dtype) in one ``.npz``."""
    for name, value in arrays.items():
        if np.asarray(value).dtype == object:
            raise ArtefactError(f"array {name!r} has dtype object; only plain arrays are stored")
    np.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def save_state_dict(path: Path, state_dict: dict) -> None:
    import torch
    torch.save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, path)


def load_state_dict(path: Path) -> dict:
    import torch
    # weights_only: tensors and plain containers only; a pickled object is refused
    return torch.load(path, map_location="cpu", weights_only=True)


def json_safe(value):
    """NumPy scalars and arrays -> plain Python, recursively (for model state)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
