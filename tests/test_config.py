import pytest

from cluster.config import load_settings, parse_tokens
from cluster.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "mlops.yaml"
    p.write_text(text)
    return p


def test_defaults_and_seed_thresholds(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLOPS_CONFIG", raising=False)
    s = load_settings()
    t = s.monitoring.alert_thresholds
    assert (t.accuracy_drop, t.latency_ms, t.drift_score) == (0.05, 1000, 0.3)
    assert str(s.home) == ".mlops"
    assert s.registry_uri.startswith("sqlite:///")


def test_repo_config_file_loads(monkeypatch):
    from pathlib import Path
    monkeypatch.setenv("MLOPS_CONFIG", str(Path(__file__).resolve().parents[1] / "mlops.yaml"))
    s = load_settings()
    assert s.feature_pipeline.indicators.rsi_window == 14


def test_yaml_then_env_override(monkeypatch, tmp_path):
    p = write(tmp_path, "mlops:\n  monitoring:\n    alert_thresholds:\n      latency_ms: 250\n"
                        "  feature_pipeline:\n    indicators:\n      rsi_window: 21\n")
    monkeypatch.setenv("MLOPS_CONFIG", str(p))
    s = load_settings()
    assert s.monitoring.alert_thresholds.latency_ms == 250
    assert s.feature_pipeline.indicators.rsi_window == 21
    monkeypatch.setenv("MLOPS_MONITORING__ALERT_THRESHOLDS__LATENCY_MS", "75")
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "h"))
    s = load_settings()
    assert s.monitoring.alert_thresholds.latency_ms == 75
    assert s.home == tmp_path / "h"
    assert s.lake_dir == tmp_path / "h" / "lake"


@pytest.mark.parametrize("text,key", [
    ("mlops:\n  monitoring:\n    alert_thresholds:\n      latency_ms: fast\n",
     "mlops.monitoring.alert_thresholds.latency_ms"),
    ("mlops:\n  feature_pipline: {}\n", "mlops.feature_pipline"),
    ("mlops:\n  qlib:\n    region: mars\n", "mlops.qlib.region"),
    ("monitoring: {}\n", "mlops:"),
    ("mlops: [1, 2]\n", "mlops"),
    ("mlops:\n  home: [unclosed\n", "not valid YAML"),
])
def test_bad_config_names_the_key(monkeypatch, tmp_path, text, key):
    monkeypatch.setenv("MLOPS_CONFIG", str(write(tmp_path, text)))
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert key in str(exc.value)


def test_bad_env_value_names_the_key(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLOPS_CONFIG", raising=False)
    monkeypatch.setenv("MLOPS_MONITORING__ALERT_THRESHOLDS__DRIFT_SCORE", "high")
    with pytest.raises(ConfigError, match="drift_score"):
        load_settings()


def test_api_tokens_from_env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLOPS_CONFIG", raising=False)
    monkeypatch.setenv("MLOPS_API_TOKENS", "viewer:v1,operator:o1, admin:a1")
    assert load_settings().api.tokens == {"v1": "viewer", "o1": "operator", "a1": "admin"}
    monkeypatch.setenv("MLOPS_API_TOKENS", "king:k1")
    with pytest.raises(ConfigError, match="api.tokens"):
        load_settings()


def test_parse_tokens_rejects_malformed():
    assert parse_tokens("viewer:a,,admin:b") == {"a": "viewer", "b": "admin"}
    with pytest.raises(ValueError):
        parse_tokens("viewer")
