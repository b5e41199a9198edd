"""The model registry on MLflow: lifecycle, lineage, integrity, compatibility, search.

Each registered version is an MLflow model version backed by a run holding the
artefacts (``model/``, ``report.json``, ``config.json``), the metrics and the
params. ``model/`` is an MLflow pyfunc model directory whose data is the model in
its libraries' own formats (:mod:`cluster.registry.artefacts`, :mod:`cluster.registry.pyfunc`):
nothing is ever unpickled on load. Our state lives in model-version tags:

- ``mlops.state`` and one ``mlops.transition.NNNN`` tag per move (time, actor,
  reason); the aliases ``production``/``staging`` follow the state;
- ``lineage.*``: data version, feature set, training config hash, code version,
  parent model, Tune experiment and trial;
- ``sha256.<artefact>``: checked on every load, a changed byte is refused
  (``sha256.model`` covers every file of the model directory);
  ``mlops.signature`` signs them (HMAC, ``signing.py``), so a changed hash tag is
  refused too;
- ``feature_set``: loading against another feature set is refused.

State moves are claimed in the lifecycle ledger first (``ledger.py``), so they are
atomic across processes, and a model has at most one ``production`` version:
promotion deprecates the previous one in the same move.

SQLite under ``$MLOPS_HOME`` by default; any MLflow URI (e.g. PostgreSQL) by
setting ``tracking_uri``. A database that cannot be reached raises
``RegistryUnavailable`` (retry when it is back), never "no such version".
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import json
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cluster.errors import MlopsError

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
from cluster.registry import signing
from cluster.registry.lifecycle import STATES, IllegalTransition, Transition, make_transition
from cluster.registry.signing import IntegrityError  # noqa: F401 (raised from here too)

log = logging.getLogger(__name__)

EXPERIMENT = "mlops-models"
ARTEFACTS = ("model", "report.json", "config.json")
MODEL_ARTEFACT = "model"   # a directory: the MLflow pyfunc model
ALIASED_STATES = ("production", "staging")


class RegistryError(MlopsError):
    """A registry lookup failed (no such model or version)."""


class RegistryUnavailable(MlopsError):
    """The registry's database cannot be reached right now; the call changed nothing
    that was not recorded, and succeeds when it is retried once the database is back."""


class ConcurrentTransition(IllegalTransition):
    """Another process moved the same version first; this move was refused."""


class CompatibilityError(MlopsError):
    """The model was trained on another feature set than the one it is loaded for."""


@dataclass
class Lineage:
    data_version: int
    feature_set: str
    config: dict = field(default_factory=dict)
    code_version: str = ""
    parent_model: str | None = None
    tune_experiment: str | None = None
    tune_trial_id: str | None = None
    segments: dict | None = None
    instruments: int | None = None
    training_run: str | None = None
    features_version: int | None = None    # the features table version trained on
    members: str | None = None             # an ensemble's member versions, "name/v,..."

    def to_tags(self) -> dict[str, str]:
        tags = {"lineage.data_version": str(self.data_version),
                "lineage.feature_set": self.feature_set,
                "lineage.config_sha256": _sha256(_canonical_json(self.config)),
                "lineage.code_version": self.code_version}
        if self.features_version is not None:
            tags["lineage.features_version"] = str(self.features_version)
        for key in ("parent_model", "tune_experiment", "tune_trial_id", "training_run",
                    "members"):
            value = getattr(self, key)
            if value:
                tags[f"lineage.{key}"] = str(value)
        if self.segments:
            tags["lineage.segments"] = json.dumps(self.segments, default=str)
        if self.instruments is not None:
            tags["lineage.instruments"] = str(self.instruments)
        return tags


@dataclass
class ModelVersionInfo:
    name: str
    version: str
    state: str
    run_id: str
    feature_set: str | None
    tags: dict[str, str]
    metrics: dict[str, float]

    @property
    def model_id(self) -> str:
        return f"{self.name}/{self.version}"

    def to_dict(self) -> dict:
        return asdict(self) | {"model_id": self.model_id}


def _redacted(uri: str) -> str:
    """The URI without a password (it goes into error messages and logs)."""
    scheme, sep, rest = uri.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return uri
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"


class _db_errors:
    """Turn "cannot reach the database" (MLflow's TEMPORARILY_UNAVAILABLE, SQLAlchemy's
    OperationalError) into ``RegistryUnavailable`` naming the database."""

    def __init__(self, uri: str):
        self.uri = uri

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, MlopsError) or not _unreachable(exc):
            return False
        raise RegistryUnavailable(
            f"the registry database {_redacted(self.uri)} is unavailable "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); nothing was changed "
            "that is not recorded: retry when it is back") from exc


def _unreachable(exc: BaseException) -> bool:
    import sqlalchemy.exc as sa_exc
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError,
                            sa_exc.DisconnectionError, ConnectionError)):
            return True
        if getattr(exc, "error_code", None) == "TEMPORARILY_UNAVAILABLE":
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _guarded(method):
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        with _db_errors(self.uri):
            return method(self, *args, **kwargs)
    return call


_lock = threading.Lock()


class ModelRegistry:
    @classmethod
    def for_settings(cls, settings) -> "ModelRegistry":
        """The registry a component with these settings uses (home + tracking URI)."""
        return cls(home=settings.home, tracking_uri=settings.tracking_uri, settings=settings)

    def __init__(self, tracking_uri: str | None = None, home: Path | None = None,
                 settings=None):
        from cluster.config import get_settings
        settings = settings or get_settings()
        self.home = Path(home or settings.home)
        self.uri = tracking_uri or (f"sqlite:///{(self.home / 'mlflow.db').resolve()}"
                                    if home else settings.registry_uri)
        if self.uri.startswith("sqlite:///"):
            Path(self.uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        from mlflow import MlflowClient
        with _db_errors(self.uri):
            self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self._experiment_id: str | None = None
        self._settings = settings
        self._key: bytes | None = None
        from cluster.registry import ledger
        self._ledger = ledger.Ledger(self.uri) if ledger.supports(self.uri) else None
        if self._ledger is None:
            log.warning("registry %s is not an SQL database: lifecycle moves are atomic "
                        "within this process only", _redacted(self.uri))

    @property
    def key(self) -> bytes:
        """The HMAC key that signs artefact hashes (``signing.signing_key``)."""
        if self._key is None:
            self._key = signing.signing_key(self._settings, home=self.home)
        return self._key

    # -- registration ------------------------------------------------------
    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            from mlflow.exceptions import MlflowException
            exp = self.client.get_experiment_by_name(EXPERIMENT)
            if exp is None:
                artifacts = (self.home / "artifacts").resolve()
                artifacts.mkdir(parents=True, exist_ok=True)
                try:
                    self._experiment_id = self.client.create_experiment(
                        EXPERIMENT, artifact_location=artifacts.as_uri())
                except MlflowException as exc:  # another process created it meanwhile
                    if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                    exp = self.client.get_experiment_by_name(EXPERIMENT)
            if exp is not None:
                self._experiment_id = exp.experiment_id
        return self._experiment_id

    @_guarded
    def register(self, name: str, model: Any, *, lineage: Lineage, report: dict,
                 config: dict, metrics: dict[str, float] | None = None,
                 params: dict | None = None, state: str = "trained", actor: str = "train",
                 reason: str = "registered", tags: dict[str, str] | None = None,
                 artefacts: dict[str, bytes] | None = None) -> ModelVersionInfo:
        """Store the artefacts, record hashes and lineage, create the version in ``state``.
        ``artefacts``: further named blobs stored and hashed the same way (e.g. the
        training reference sample, ``cluster.monitoring.reference``)."""
        transition = make_transition(None, state, actor, reason)
        features = _model_features(model, report)
        run = self.client.create_run(self.experiment_id, run_name=f"{name}-register",
                                     tags={"mlops.model_name": name})
        run_id = run.info.run_id
        hashes = self._log_artefacts(run_id, model, features, report, config, artefacts)
        for key, value in (metrics or {}).items():
            if value is not None and value == value:  # skip NaN
                self.client.log_metric(run_id, key, float(value))
        for key, value in (params or {}).items():
            self.client.log_param(run_id, key, str(value)[:6000])
        self.client.set_terminated(run_id)
        version_tags = {
            **lineage.to_tags(), **(tags or {}),
            "feature_set": lineage.feature_set,
            "mlops.state": state,
            "mlops.transition.0001": json.dumps(transition.to_dict()),
            **self._signed_hash_tags(run_id, hashes, lineage.feature_set),
        }
        with _lock:
            self._ensure_registered_model(name)
            mv = self.client.create_model_version(name, source=f"runs:/{run_id}/{MODEL_ARTEFACT}",
                                                  run_id=run_id, tags=version_tags)
        return self.get(name, mv.version)

    def _log_artefacts(self, run_id: str, model: Any, features: list[str], report: dict,
                       config: dict, artefacts: dict[str, bytes] | None = None
                       ) -> dict[str, str]:
        """Write the model (library formats, as an MLflow pyfunc directory), the report,
        the config and further blobs to the run; returns each artefact's sha256."""
        from cluster.registry.artefacts import tree_sha256
        from cluster.registry.pyfunc import write_model_dir
        hashes = {}
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(tmp) / MODEL_ARTEFACT
            write_model_dir(model, features, model_dir, Path(tmp) / "staging")
            hashes[MODEL_ARTEFACT] = tree_sha256(model_dir)
            self.client.log_artifacts(run_id, str(model_dir), MODEL_ARTEFACT)
            blobs = {"report.json": json.dumps(report, indent=2, default=str).encode(),
                     "config.json": _canonical_json(config).encode(), **(artefacts or {})}
            for fname, blob in blobs.items():
                path = Path(tmp) / fname
                path.write_bytes(blob)
                hashes[fname] = _sha256(blob)
                self.client.log_artifact(run_id, str(path))
        return hashes

    def _ensure_registered_model(self, name: str) -> None:
        """Create the registered model unless it exists. Two processes registering the
        first version of a new model at once both find it missing; one creates it, the
        other's create is refused as already existing, which is what it wanted. (The
        version numbers themselves MLflow allocates under a unique key, retrying.)"""
        from mlflow.exceptions import MlflowException
        try:
            self.client.get_registered_model(name)
            return
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
        try:
            self.client.create_registered_model(name, tags={"mlops.kind": "stock-model"})
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    # -- lifecycle ---------------------------------------------------------
    def state(self, name: str, version: str | int) -> str:
        return self._mv(name, version).tags.get("mlops.state", "trained")

    def history(self, name: str, version: str | int) -> list[Transition]:
        tags = self._mv(name, version).tags
        keys = sorted(k for k in tags if k.startswith("mlops.transition."))
        return [Transition.from_dict(json.loads(tags[k])) for k in keys]

    inflight_wait_s = 30.0      # how long a claimed, unmirrored move counts as in flight

    def transition(self, name: str, version: str | int, to_state: str, actor: str,
                   reason: str = "", expected_state: str | None = None) -> Transition:
        """Move a version to ``to_state`` if the state machine allows it (else raise
        ``IllegalTransition``). Atomic across processes: of two moves of one version at
        once exactly one wins, the other raises ``ConcurrentTransition``; with
        ``expected_state`` (the state the caller saw) a version that moved since is
        refused the same way. A move to ``production`` deprecates the model's other
        production version in the same step."""
        version = str(version)
        if self._ledger is None:
            with _lock:
                plan, t = self._plan_move(name, version, to_state, actor, reason,
                                          expected_state)
                self._apply_move(name, plan)
            return t
        with _db_errors(self.uri):
            for _ in range(20):
                seq = self._roll_forward(name, self.inflight_wait_s)
                plan, t = self._plan_move(name, version, to_state, actor, reason,
                                          expected_state)
                if self._ledger.claim(name, seq + 1, plan):
                    self._apply_move(name, plan)
                    self._ledger.mark_applied(name, seq + 1)
                    return t
                mine = {m["version"] for m in plan}
                for _, record in self._ledger.since(name, seq):
                    for m in record:
                        if m["version"] in mine:
                            raise ConcurrentTransition(
                                f"{name}/{m['version']} was moved {m['from']} -> {m['to']} by "
                                f"{m['transition']['actor']} at the same time; this move to "
                                f"{to_state!r} was refused (state now {m['to']!r})")
            raise ConcurrentTransition(f"{name}: too many concurrent lifecycle moves; "
                                       f"{name}/{version} -> {to_state} not done, retry it")

    def _plan_move(self, name: str, version: str, to_state: str, actor: str, reason: str,
                   expected_state: str | None = None) -> tuple[list[dict], Transition]:
        """The per-version moves of one step (deprecations first), checked against the
        state machine on the current tags."""
        mv = self._mv(name, version)
        current = mv.tags.get("mlops.state")
        if expected_state is not None and current != expected_state:
            raise ConcurrentTransition(f"{name}/{version} is {current!r}, not the "
                                       f"{expected_state!r} this move to {to_state!r} "
                                       "expected: another process moved it first; refused")
        t = make_transition(current, to_state, actor, reason)
        plan = []
        if to_state == "production":
            found = self.client.search_model_versions(
                f"name = '{_q(name)}' and tags.`mlops.state` = 'production'")
            for other in found:
                if str(other.version) != version:
                    old = make_transition("production", "deprecated", actor,
                                          f"replaced by {name}/{version}: {reason}".rstrip(": "))
                    plan.append(_move_entry(other, old))
        plan.append(_move_entry(mv, t))
        return plan, t

    def _apply_move(self, name: str, plan: list[dict]) -> None:
        """Mirror a claimed move into the version tags and aliases (idempotent)."""
        for m in plan:
            version, frm, to = m["version"], m["from"], m["to"]
            self.client.set_model_version_tag(name, version, f"mlops.transition.{m['n']:04d}",
                                              json.dumps(m["transition"]))
            self.client.set_model_version_tag(name, version, "mlops.state", to)
            if to in ALIASED_STATES:
                self.client.set_registered_model_alias(name, to, version)
            if frm in ALIASED_STATES and frm != to:
                try:
                    held = self.client.get_model_version_by_alias(name, frm).version
                except Exception:
                    continue        # no such alias any more
                if str(held) == version:
                    self.client.delete_registered_model_alias(name, frm)

    def _roll_forward(self, name: str, fresh_s: float = 30.0) -> int:
        """Apply moves that were claimed but not mirrored (their process died), after
        waiting a little for ones still in flight; returns the latest move number."""
        deadline = time.monotonic() + fresh_s
        while True:
            pending = self._ledger.unapplied(name)
            if not pending:
                return self._ledger.head(name)
            if time.monotonic() > deadline:
                for seq, record in pending:
                    log.warning("%s: completing lifecycle move %d left half-done: %s", name,
                                seq, [(m["version"], m["to"]) for m in record])
                    self._apply_move(name, record)
                    self._ledger.mark_applied(name, seq)
                return self._ledger.head(name)
            time.sleep(0.05)

    def by_state(self, name: str, state: str) -> list[ModelVersionInfo]:
        return [v for v in self.versions(name) if v.state == state]

    # -- reading -----------------------------------------------------------
    @_guarded
    def get(self, name: str, version: str | int) -> ModelVersionInfo:
        mv = self._mv(name, version)
        metrics = {}
        if mv.run_id:
            metrics = dict(self.client.get_run(mv.run_id).data.metrics)
        return ModelVersionInfo(name, str(mv.version), mv.tags.get("mlops.state", "trained"),
                                mv.run_id, mv.tags.get("feature_set"), dict(mv.tags), metrics)

    @_guarded
    def versions(self, name: str) -> list[ModelVersionInfo]:
        found = self.client.search_model_versions(f"name = '{_q(name)}'")
        return sorted((self.get(name, mv.version) for mv in found), key=lambda v: int(v.version))

    @_guarded
    def lineage(self, name: str, version: str | int) -> dict:
        info = self.get(name, version)
        lin = {k[len("lineage."):]: v for k, v in info.tags.items() if k.startswith("lineage.")}
        if "segments" in lin:
            lin["segments"] = json.loads(lin["segments"])
        for key in ("data_version", "features_version"):
            if key in lin:
                lin[key] = int(lin[key])
        lin["config"] = self.artefact_json(name, version, "config.json")
        lin["model_id"] = info.model_id
        return lin

    @_guarded
    def artefact_bytes(self, name: str, version: str | int, artefact: str) -> bytes:
        """One stored artefact's bytes, sha256-checked against registration."""
        return self._verified_bytes(name, version, artefact)

    @_guarded
    def attach_artefact(self, name: str, version: str | int, artefact: str,
                        blob: bytes) -> None:
        """Add a derived artefact to an existing version (e.g. its global explanation,
        computed once). Its hash and HMAC go in ONE tag of their own,
        ``derived.<artefact>``, so the version's signed registration hashes stay as they
        are and a reader never sees half of an update; read it with ``derived_bytes``."""
        if artefact in ARTEFACTS or artefact == signing.MANIFEST:
            raise RegistryError(f"{artefact} is a registered artefact; it cannot be replaced")
        mv = self._mv(name, version)
        self._check_signature(mv)           # never vouch for a version already changed
        digest = _sha256(blob)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / artefact
            path.write_bytes(blob)
            self.client.log_artifact(mv.run_id, str(path))
        record = {"sha256": digest, "signature": signing.sign(
            self.key, {"run_id": mv.run_id, "artefact": artefact, "sha256": digest})}
        self.client.set_model_version_tag(name, str(version), f"derived.{artefact}",
                                          json.dumps(record))

    @_guarded
    def derived_bytes(self, name: str, version: str | int, artefact: str) -> bytes | None:
        """A derived artefact's bytes (None when never attached), hash and HMAC checked."""
        mv = self._mv(name, version)
        raw = mv.tags.get(f"derived.{artefact}")
        if raw is None:
            return None
        try:
            record = json.loads(raw)
        except ValueError:
            raise IntegrityError(f"{name}/{version}: tag derived.{artefact} is not JSON") from None
        signing.check(self.key, {"run_id": mv.run_id, "artefact": artefact,
                                 "sha256": record.get("sha256")}, record.get("signature"),
                      f"{name}/{version} {artefact}")
        with tempfile.TemporaryDirectory() as tmp:
            blob = Path(self.client.download_artifacts(mv.run_id, artefact, tmp)).read_bytes()
        if _sha256(blob) != record["sha256"]:
            raise IntegrityError(f"{name}/{version}: {artefact} does not match its recorded "
                                 "sha256; refusing it")
        return blob

    @_guarded
    def artefact_json(self, name: str, version: str | int, artefact: str) -> dict:
        return json.loads(self._verified_bytes(name, version, artefact))

    @_guarded
    def verify(self, name: str, version: str | int) -> dict[str, str]:
        """sha256 of every artefact, checked against registration; raises on a mismatch."""
        from cluster.registry.artefacts import tree_sha256
        out = {}
        for a in ARTEFACTS:
            if a == MODEL_ARTEFACT:
                with self._verified_dir(name, version, a) as path:
                    out[a] = tree_sha256(path)
            else:
                out[a] = _sha256(self._verified_bytes(name, version, a))
        return out

    @_guarded
    def load(self, name: str, version: str | int, expected_feature_set: str | None = None):
        """The model object, after integrity and (optionally) feature-set checks. The
        model is rebuilt from its library-format files; nothing is unpickled."""
        from cluster.registry.artefacts import load_model
        from cluster.registry.pyfunc import model_data_dir
        info = self.get(name, version)
        if expected_feature_set is not None and info.feature_set != expected_feature_set:
            raise CompatibilityError(
                f"model {info.model_id} was trained on feature set {info.feature_set!r}, "
                f"not the current {expected_feature_set!r}; retrain it on the current features")
        with self._verified_dir(name, version, MODEL_ARTEFACT) as path:
            return load_model(model_data_dir(path), self._settings.registry.model_modules)

    @_guarded
    def search(self, name: str | None = None, state: str | None = None,
               tags: dict[str, str] | None = None, metric: str | None = None,
               min_value: float | None = None, descending: bool = True,
               limit: int = 100) -> list[ModelVersionInfo]:
        """Versions matching name, state and tags, optionally ranked by a run metric."""
        clauses = []
        if name:
            clauses.append(f"name = '{_q(name)}'")
        if state:
            if state not in STATES:
                raise RegistryError(f"unknown state {state!r}; states are {STATES}")
            clauses.append(f"tags.`mlops.state` = '{state}'")
        for key, value in (tags or {}).items():
            clauses.append(f"tags.`{key}` = '{_q(value)}'")
        found = self.client.search_model_versions(" and ".join(clauses) or None)
        infos = [self.get(mv.name, mv.version) for mv in found]
        if metric:
            infos = [i for i in infos if metric in i.metrics
                     and (min_value is None or i.metrics[metric] >= min_value)]
            infos.sort(key=lambda i: i.metrics[metric], reverse=descending)
        else:
            infos.sort(key=lambda i: (i.name, int(i.version)))
        return infos[:limit]

    # -- internals ---------------------------------------------------------
    def _mv(self, name: str, version: str | int):
        try:
            with _db_errors(self.uri):
                return self.client.get_model_version(name, str(version))
        except RegistryUnavailable:
            raise
        except Exception as exc:
            raise RegistryError(f"no model version {name}/{version} in "
                                f"{_redacted(self.uri)}") from exc

    def _signed_hash_tags(self, run_id: str, hashes: dict[str, str], feature_set: str) -> dict:
        """``sha256.<artefact>`` tags and the signature binding them to the run."""
        tags = {f"sha256.{k}": v for k, v in hashes.items()}
        tags[signing.SIGNATURE_TAG] = signing.sign(self.key, _signed_payload(run_id, tags,
                                                                            feature_set))
        return tags

    def _check_signature(self, mv) -> None:
        signing.check(self.key, _signed_payload(mv.run_id, mv.tags, mv.tags.get("feature_set")),
                      mv.tags.get(signing.SIGNATURE_TAG), f"{mv.name}/{mv.version}")

    @contextlib.contextmanager
    def _verified_dir(self, name: str, version: str | int, artefact: str):
        """A local copy of a directory artefact whose tree hash matches registration
        (the signature over the hash tags checked first, as ``_verified_bytes`` does)."""
        from cluster.registry.artefacts import tree_sha256
        mv = self._mv(name, version)
        expected = mv.tags.get(f"sha256.{artefact}")
        if expected is None:
            legacy = " (it was stored as a pickle, which is never loaded: retrain it)" \
                if mv.tags.get("sha256.model.pkl") else ""
            raise IntegrityError(f"{name}/{version} has no recorded sha256 for {artefact}"
                                 + legacy)
        self._check_signature(mv)
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(self.client.download_artifacts(mv.run_id, artefact, tmp))
            actual = tree_sha256(local) if local.is_dir() else None
            if actual != expected:
                raise IntegrityError(
                    f"{name}/{version}: {artefact} sha256 {str(actual)[:16]}... does not match "
                    f"the recorded {expected[:16]}...; refusing to load it")
            yield local

    def _verified_bytes(self, name: str, version: str | int, artefact: str) -> bytes:
        mv = self._mv(name, version)
        self._check_signature(mv)
        expected = mv.tags.get(f"sha256.{artefact}")
        if expected is None:
            raise IntegrityError(f"{name}/{version} has no recorded sha256 for {artefact}")
        with tempfile.TemporaryDirectory() as tmp:
            local = self.client.download_artifacts(mv.run_id, artefact, tmp)
            blob = Path(local).read_bytes()
        actual = _sha256(blob)
        if actual != expected:
            raise IntegrityError(f"{name}/{version}: {artefact} sha256 {actual[:16]}... does not "
                                 f"match the recorded {expected[:16]}...; refusing to load it")
        return blob


def _model_features(model, report: dict) -> list[str]:
    features = [str(f) for f in (getattr(model, "feature_names", None) or [])]
    return features or [str(f) for f in (report.get("data") or {}).get("features", [])]


def _sha256(blob: bytes | str) -> str:
    return hashlib.sha256(blob.encode() if isinstance(blob, str) else blob).hexdigest()


def _signed_payload(run_id: str, tags: dict, feature_set: str | None) -> dict:
    """What a version's signature covers: its run, every artefact hash, its feature set."""
    return {"run_id": run_id, "feature_set": feature_set,
            "sha256": {k: v for k, v in tags.items() if k.startswith("sha256.")}}


def _move_entry(mv, t: Transition) -> dict:
    n = 1 + sum(1 for k in mv.tags if k.startswith("mlops.transition."))
    return {"version": str(mv.version), "from": t.from_state, "to": t.to_state, "n": n,
            "transition": t.to_dict()}




def _canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def _q(text: str) -> str:
    return str(text).replace("'", "''")


def code_version() -> str:
    """A content hash of this project's Python sources (and the git commit if known)."""
    root = Path(__file__).resolve().parents[2]
    h = hashlib.sha256()
    for pkg in ("cluster", "jobs", "tuning", "serving"):
        for path in sorted((root / pkg).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    version = f"src-{h.hexdigest()[:12]}"
    head = root / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            ref = (root / ".git" / ref[5:]).read_text().strip()
        version += f"+git-{ref[:12]}"
    except OSError:
        pass
    return version
