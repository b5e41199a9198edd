"""Settings: ``mlops.yaml`` (section ``mlops:``) overridden by ``MLOPS_*`` variables.

Nested keys use ``__`` in variable names, e.g.
``MLOPS_MONITORING__ALERT_THRESHOLDS__LATENCY_MS=500``. ``MLOPS_HOME`` sets where
the lake and the registry live (default ``.mlops/`` in the working directory),
``MLOPS_CONFIG`` which YAML file is read (default ``./mlops.yaml`` when present),
and ``MLOPS_API_TOKENS`` the API tokens as ``role:token,role:token``.

Every section forbids unknown keys, so a typo in the file is refused with the
key's full path rather than silently ignored.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from cluster.errors import ConfigError

ROLES = ("viewer", "operator", "admin")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IndicatorParams(_Section):
    sma_windows: list[int] = [5, 10, 20, 60]
    ema_windows: list[int] = [12, 26]
    bollinger_window: int = 20
    bollinger_std: float = 2.0
    sar_acceleration: float = 0.02
    sar_maximum: float = 0.2
    rsi_window: int = 14
    stoch_k: int = 14
    stoch_slowk: int = 3
    stoch_d: int = 3
    williams_window: int = 14
    cci_window: int = 20
    vwap_window: int = 20
    atr_window: int = 14
    hv_window: int = 20
    hv_annualization: int = 252


class FeaturePipelineSettings(_Section):
    indicators: IndicatorParams = IndicatorParams()
    # Instruments per Ray Data block: each block holds whole instruments only. A
    # block task costs ~60 ms beyond its work on 2 CPUs: the 241-stock full run took
    # 4.0 s with 8 per block, 3.1 s with 16, 2.4-2.6 s with 24-64 (median of 4,
    # measured); a block of 32 x 1,260 days stays a few hundred MB in its worker.
    instruments_per_block: int = Field(32, ge=1)
    # Below this many rows to compute, the pipeline runs in process: scheduling
    # Ray Data tasks costs more than the work.
    local_threshold_rows: int = Field(20_000, ge=0)


class QlibSettings(_Section):
    region: Literal["us", "cn"] = "us"
    # The one source of the label horizon: the label is Ref($close, -h)/Ref($close, -1)
    # - 1 (``label``), and training's and tuning's purge gaps are h days.
    label_horizon: int = Field(2, ge=2)

    @property
    def label(self) -> str:
        from cluster.features.label import label_expression
        return label_expression(self.label_horizon)


class TrainingSettings(_Section):
    # The top-k long-short backtest pays this much per unit of traded notional on each
    # side (a buy and a sell each cost it): 10 bps is a common large-cap assumption.
    cost_bps: float = Field(10.0, ge=0)


class IngestSettings(_Section):
    # Relative slack allowed for open/close outside [low, high]: Yahoo rounds
    # prices, and CBOE 2020-01-10 opens 0.07% above its high in the shared data.
    range_tolerance: float = Field(1e-3, ge=0)
    on_error: Literal["fail", "quarantine"] = "fail"


class LakeSettings(_Section):
    # Vacuum keeps the files of the last this-many versions of every table (for bars:
    # data versions), besides every bars data version a registered model or a live
    # deployment names.
    retain_versions: int = Field(10, ge=1)
    # Where the lake's tables live: a folder, or ``s3://bucket/prefix`` on an
    # S3-compatible store (endpoint and credentials from the standard AWS variables,
    # ``AWS_ENDPOINT_URL`` for a non-AWS server; cluster/lake/storage.py). None:
    # ``<home>/lake``.
    uri: str | None = None

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if "://" in value and not value.startswith("s3://"):
            raise ValueError("lake.uri must be a folder or s3://bucket/prefix")
        if value.startswith("s3://") and not value[len("s3://"):].strip("/"):
            raise ValueError("lake.uri s3:// needs a bucket: s3://bucket/prefix")
        return value


class AlertThresholds(_Section):
    accuracy_drop: float = 0.05
    latency_ms: float = 1000
    drift_score: float = 0.3


class ResourceThresholds(_Section):
    # fractions of the node's capacity (Ray's object store; this node's CPU and memory)
    object_store: float = Field(0.9, gt=0, le=1)
    node_cpu: float = Field(0.95, gt=0, le=1)
    node_memory: float = Field(0.9, gt=0, le=1)


class DriftSettings(_Section):
    psi_threshold: float = Field(0.2, gt=0)
    ks_alpha: float = Field(0.01, gt=0, lt=1)
    window_days: int = Field(20, ge=1)
    bins: int = Field(10, ge=2)


class MonitoringSettings(_Section):
    alert_thresholds: AlertThresholds = AlertThresholds()
    resource_thresholds: ResourceThresholds = ResourceThresholds()
    drift: DriftSettings = DriftSettings()
    # accuracy_drop: the rolling realised RankIC over this many evaluated days (at least
    # accuracy_min_days of them) below the version's test RankIC by more than the threshold
    accuracy_window_days: int = Field(60, ge=1)
    accuracy_min_days: int = Field(40, ge=1)
    # what an alert of a rule does besides being recorded: rule -> rollback | retrain
    actions: dict[str, Literal["rollback", "retrain"]] = {}
    webhook_url: str | None = None
    webhook_retries: int = Field(3, ge=0)
    webhook_backoff_s: float = Field(0.5, ge=0)
    # the job a retrain action submits
    retrain_job: Literal["train", "tune"] = "train"
    topk_fraction: float = Field(0.1, gt=0, le=0.5)


class ApiSettings(_Section):
    # token -> role
    tokens: dict[str, Literal["viewer", "operator", "admin"]] = {}
    # sha256(token) -> role: what actors and replicas get instead of the tokens
    # (``MLOPS_API_TOKEN_HASHES=role:sha256hex,...``), so no token sits in a runtime env.
    token_hashes: dict[str, Literal["viewer", "operator", "admin"]] = {}
    host: str = "127.0.0.1"
    port: int = 8000
    # /predict limits: a larger body is 413, more rows or instruments 422 (naming the field).
    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_rows: int = Field(10_000, ge=1)
    max_instruments: int = Field(5_000, ge=1)

    @field_validator("tokens", mode="before")
    @classmethod
    def _parse_tokens(cls, value: Any) -> Any:
        return parse_tokens(value) if isinstance(value, (str, list)) else value

    @field_validator("token_hashes", mode="before")
    @classmethod
    def _parse_hashes(cls, value: Any) -> Any:
        if not isinstance(value, (str, list)):
            return value
        out = parse_tokens(value)
        bad = [h for h in out if len(h) != 64 or any(c not in "0123456789abcdef" for c in h)]
        if bad:
            raise ValueError("token hashes must be 64 lowercase hex digits (sha256)")
        return out


class ServingSettings(_Section):
    replica_num_cpus: float = Field(0.25, gt=0)
    num_replicas: int = Field(1, ge=1)
    predictions_flush_rows: int = Field(20_000, ge=1)
    predictions_flush_seconds: float = Field(5.0, gt=0)
    # How often a replica sends its statistics and asks for policy changes (one Ray
    # actor call each), and whether Serve logs one access line per request (~5% of a
    # replica's CPU, profiled; every prediction is in the predictions table anyway).
    # Both together, against 0.2 s and on: bench p99 7.7-8.6 ms instead of 9.7-12.2.
    sync_interval_s: float = Field(1.0, gt=0)
    access_log: bool = False
    # Model calls run on this many threads per replica, off the event loop (LightGBM
    # and numpy release the GIL, so the loop keeps reading requests meanwhile).
    predict_threads: int = Field(2, ge=1)


class QueueSettings(_Section):
    """The resource-aware job queue (``cluster.resources``)."""
    # The Ray dashboard the queue submits Ray jobs to; None: the connected Ray's, else
    # http://127.0.0.1:8265.
    dashboard_address: str | None = None
    # A waiting job gains one priority level per ``aging_s`` seconds, so a job of the
    # lowest priority outranks every newcomer after (max - min priority) * aging_s.
    aging_s: float = Field(60.0, gt=0)
    # A blocked head of the queue stops backfilling (smaller jobs overtaking it) once it
    # has waited this long, so it starts when the running jobs end.
    reserve_after_s: float = Field(300.0, ge=0)
    tick_s: float = Field(2.0, gt=0)
    # What the queue may hand out; None: the cluster's total resources as Ray reports them.
    capacity_cpus: float | None = Field(None, ge=0)
    capacity_gpus: float | None = Field(None, ge=0)
    # Whether the API's replicas run the queue (admit and submit) in the background.
    run_in_api: bool = True


class RegistrySettings(_Section):
    # HMAC key that signs every artefact hash (cluster/registry/signing.py): the key
    # itself, or a file holding it (default $MLOPS_HOME/keys/registry.key, made on
    # first use). A changed hash tag then fails like a changed byte.
    signing_key: SecretStr | None = None
    signing_key_file: Path | None = None
    # Modules whose classes may be rebuilt from a registered model's manifest. Model
    # artefacts are data (booster files, state_dicts, arrays, JSON); the manifest names
    # the class that reads them, and only classes under these prefixes are trusted.
    model_modules: list[str] = ["cluster.models"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MLOPS_", env_nested_delimiter="__",
                                      extra="forbid")

    home: Path = Path(".mlops")
    # MLflow tracking/registry URI; default: SQLite under home.
    tracking_uri: str | None = None
    feature_pipeline: FeaturePipelineSettings = FeaturePipelineSettings()
    qlib: QlibSettings = QlibSettings()
    ingest: IngestSettings = IngestSettings()
    lake: LakeSettings = LakeSettings()
    training: TrainingSettings = TrainingSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    api: ApiSettings = ApiSettings()
    serving: ServingSettings = ServingSettings()
    queue: QueueSettings = QueueSettings()
    registry: RegistrySettings = RegistrySettings()

    @field_validator("home", mode="before")
    @classmethod
    def _local_home(cls, value: Any) -> Any:
        if isinstance(value, str) and "://" in value:
            raise ValueError("MLOPS_HOME is a folder (registry, keys, serving state); put "
                             "the lake on object storage with lake.uri (MLOPS_LAKE__URI)")
        return value

    @property
    def lake_dir(self):
        """The lake: ``lake.uri`` (a Path, or an ``ObjectPath`` for s3://), else
        ``<home>/lake``."""
        if self.lake.uri is None:
            return self.home / "lake"
        from cluster.lake.storage import location
        return location(self.lake.uri)

    @property
    def registry_uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings,
                                   dotenv_settings, file_secret_settings):
        # Precedence: explicit arguments > MLOPS_* variables > mlops.yaml > defaults.
        # The feature definitions changed over the API (cluster.features.catalog) sit
        # under home, between the variables and the file.
        return (init_settings, _TokensEnvSource(settings_cls), env_settings,
                _FeatureParamsSource(settings_cls), _YamlSource(settings_cls))


def parse_tokens(value: str | list) -> dict[str, str]:
    """``"role:token,role:token"`` (or a list of such items) -> {token: role}."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: dict[str, str] = {}
    for item in (i.strip() for i in items):
        if not item:
            continue
        role, sep, token = item.partition(":")
        if not sep or not token or role not in ROLES:
            raise ValueError(f"token entry {item!r} is not 'role:token' with role in {ROLES}")
        out[token] = role
    return out


def config_path() -> Path | None:
    env = os.environ.get("MLOPS_CONFIG")
    if env:
        return Path(env)
    local = Path("mlops.yaml")
    return local if local.exists() else None


class _YamlSource(PydanticBaseSettingsSource):
    def get_field_value(self, field, field_name):  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = config_path()
        if path is None:
            return {}
        return read_yaml_section(path)


class _TokensEnvSource(PydanticBaseSettingsSource):
    """``MLOPS_API_TOKENS=role:token,...`` (and ``MLOPS_API_TOKEN_HASHES``) are flat,
    not ``MLOPS_API__TOKENS``."""

    def get_field_value(self, field, field_name):  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        api = {key: os.environ[var] for key, var in (("tokens", "MLOPS_API_TOKENS"),
                                                     ("token_hashes", "MLOPS_API_TOKEN_HASHES"))
               if os.environ.get(var)}
        return {"api": api} if api else {}


class _FeatureParamsSource(PydanticBaseSettingsSource):
    """``$MLOPS_HOME/features/params.json``: indicator parameters changed over the API
    (``PUT /api/features/{id}``), so every job started afterwards computes them."""

    def get_field_value(self, field, field_name):  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        home = os.environ.get("MLOPS_HOME")
        if home is None:
            path = config_path()
            home = (read_yaml_section(path).get("home") if path is not None else None) \
                or ".mlops"
        stored = read_feature_params(Path(home))
        return {"feature_pipeline": {"indicators": stored}} if stored else {}


FEATURE_PARAMS_FILE = Path("features") / "params.json"


def read_feature_params(home: Path) -> dict | None:
    """The indicator parameters stored under ``home`` by a feature change (None: none)."""
    import json
    path = Path(home) / FEATURE_PARAMS_FILE
    try:
        return json.loads(path.read_text())["indicators"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: unreadable feature parameters ({exc})") from None


def read_yaml_section(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or set(data) - {"mlops"}:
        extra = sorted(set(data) - {"mlops"}) if isinstance(data, dict) else [type(data).__name__]
        raise ConfigError(f"{path}: top-level key(s) {extra} not allowed; "
                          "put every setting under 'mlops:'")
    section = data.get("mlops") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: key 'mlops' must be a mapping")
    return section


def load_settings(**overrides: Any) -> Settings:
    """Build settings; a bad file or variable raises ConfigError naming the key."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        src = config_path() or "environment"
        problems = []
        for err in exc.errors():
            key = "mlops." + ".".join(str(p) for p in err["loc"])
            problems.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError(f"{src}: invalid setting " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def _cached() -> Settings:
    return load_settings()


def get_settings() -> Settings:
    """Process-wide settings, read once. ``reset_settings()`` forgets them."""
    return _cached()


def reset_settings() -> None:
    _cached.cache_clear()
