"""Bad input is refused with file, row and column named, and the lake never changes."""
import pandas as pd
import pytest
from hypothesis import given, strategies as st

from cluster import errors as E
from cluster.config import load_settings
from cluster.lake.bars import BarsTable
from cluster.lake.ingest import ingest
from cluster.lake.quarantine import QuarantineTable
from cluster.sources.synthetic import synthetic_market

HEADER = ["Date", "High", "Low", "Open", "Close", "Volume", "Adj Close", "Name"]
NUMERIC = ["High", "Low", "Open", "Close", "Volume", "Adj Close"]
PRICES = ["High", "Low", "Open", "Close", "Adj Close"]


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """A lake holding one synthetic version; every bad ingest must leave it as is."""
    home = tmp_path_factory.mktemp("home")
    settings = load_settings(home=home)
    ingest("synthetic", stocks=3, days=20, seed=1, settings=settings)
    table = BarsTable(settings.lake_dir)
    return settings, table, table.version(), table.read()


def csv_lines(seed: int, n_files: int = 2, n_rows: int = 8):
    raw = synthetic_market(n_files, n_rows, seed=seed)
    files = {}
    for name, grp in raw.groupby("Name"):
        rows = [[f"{v:.6f}" if isinstance(v, float) else str(v) for v in r]
                for r in grp[HEADER].itertuples(index=False)]
        files[f"{name}_data.csv"] = [list(HEADER)] + rows
    return files


CORRUPTIONS = ["truncate", "extra_field", "not_a_number", "empty_value", "bad_date", "nan_price",
               "zero_price", "negative_price", "high_below_low", "open_above_high",
               "close_below_low", "duplicate", "unknown_column", "missing_column",
               "empty_file", "header_only", "binary", "negative_volume"]


@st.composite
def corrupted_folder(draw):
    seed = draw(st.integers(0, 10_000))
    files = csv_lines(seed)
    name = draw(st.sampled_from(sorted(files)))
    lines = files[name]
    kind = draw(st.sampled_from(CORRUPTIONS))
    i = draw(st.integers(1, len(lines) - 1))  # a data line (index into lines; line no = i+1)
    col = None
    expect_line = i + 1
    row = lines[i]
    if kind == "truncate":
        i = len(lines) - 1
        expect_line = i + 1
        cut = draw(st.integers(1, len(HEADER) - 1))
        lines[i] = lines[i][:cut]
    elif kind == "extra_field":
        lines[i] = row + ["42"]
    elif kind in ("not_a_number", "empty_value", "nan_price", "zero_price", "negative_price"):
        col = draw(st.sampled_from(PRICES if kind != "not_a_number" and kind != "empty_value"
                                   else NUMERIC))
        value = {"not_a_number": draw(st.sampled_from(["abc", "1.2.3", "--", "12;5x", "1e"])),
                 "empty_value": "", "nan_price": "NaN", "zero_price": "0",
                 "negative_price": "-3.5"}[kind]
        row[HEADER.index(col)] = value
    elif kind == "bad_date":
        col = "Date"
        row[0] = draw(st.sampled_from(["2019-13-45", "yesterday", "31/12/2019", "2019-02-30",
                                     "0000-01-01", "9999-12-31"]))
    elif kind == "high_below_low":
        col = "High"
        low = float(row[HEADER.index("Low")])
        row[HEADER.index("High")] = f"{low * 0.9:.6f}"
    elif kind == "open_above_high":
        col = "Open"
        row[HEADER.index("Open")] = f"{float(row[HEADER.index('High')]) * 1.05:.6f}"
    elif kind == "close_below_low":
        col = "Close"
        row[HEADER.index("Close")] = f"{float(row[HEADER.index('Low')]) * 0.95:.6f}"
    elif kind == "negative_volume":
        col = "Volume"
        row[HEADER.index("Volume")] = "-100"
    elif kind == "duplicate":
        lines.append(list(row))
        col = "Date"
        expect_line = None  # either copy may be named
    elif kind == "unknown_column":
        lines[0] = lines[0] + ["Dividend"]
        for r in lines[1:]:
            r.append("0")
        col, expect_line = "Dividend", None
    elif kind == "missing_column":
        col = draw(st.sampled_from(HEADER[:-1]))
        j = HEADER.index(col)
        for r in lines:
            del r[j]
        expect_line = None
    elif kind in ("empty_file", "header_only", "binary"):
        expect_line = None
    content = {f: "\n".join(",".join(r) for r in ls) + "\n" for f, ls in files.items()}
    if kind == "empty_file":
        content[name] = ""
    elif kind == "header_only":
        content[name] = ",".join(HEADER) + "\n"
    elif kind == "binary":
        content[name] = bytes(draw(st.binary(min_size=8, max_size=64))) + b"\x00\xff\xfe"
    elif kind == "truncate":
        # a file cut short mid-line: no trailing newline
        content[name] = content[name].rstrip("\n")
    return content, name, kind, col, expect_line


@given(case=corrupted_folder())
def test_malformed_inputs_are_refused_and_never_change_the_lake(lake, tmp_path_factory, case):
    settings, table, version, before = lake
    content, name, kind, col, expect_line = case
    folder = tmp_path_factory.mktemp("bad")
    for f, text in content.items():
        (folder / f).write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(E.DataError) as exc:
        ingest(str(folder), settings=settings)
    err = exc.value
    assert err.file is not None and err.file.endswith(name), (kind, str(err))
    assert name in str(err)
    if col is not None:
        assert err.column == col, (kind, str(err))
        assert f"column '{col}'" in str(err)
    if expect_line is not None:
        assert (err.row, err.row_kind) == (expect_line, "line"), (kind, str(err))
        assert f"line {expect_line}" in str(err)
    assert table.version() == version
    pd.testing.assert_frame_equal(table.read(), before)


def test_error_classes_are_typed(tmp_path):
    settings = load_settings(home=tmp_path / "h")
    (tmp_path / "x.csv").write_text("Date,High,Low,Open,Close,Volume,Name\n")
    with pytest.raises(E.MissingFieldError, match="Adj Close"):
        ingest(str(tmp_path / "x.csv"), settings=settings)
    (tmp_path / "y.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    with pytest.raises(E.CorruptFileError, match="y.parquet"):
        ingest(str(tmp_path / "y.parquet"), settings=settings)
    (tmp_path / "empty").mkdir()
    with pytest.raises(E.EmptySourceError, match="empty"):
        ingest(str(tmp_path / "empty"), fmt="csv", settings=settings)
    with pytest.raises(E.EmptySourceError, match="does not exist"):
        ingest(str(tmp_path / "nope"), settings=settings)
    assert not BarsTable(settings.lake_dir).exists()


def test_truncated_parquet_is_refused(tmp_path):
    settings = load_settings(home=tmp_path / "h")
    raw = synthetic_market(2, 10, seed=0)
    raw.to_parquet(tmp_path / "ok.parquet", index=False)
    data = (tmp_path / "ok.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(E.CorruptFileError, match="cut.parquet"):
        ingest(str(tmp_path / "cut.parquet"), settings=settings)


def test_parquet_bad_value_names_row_and_column(tmp_path):
    settings = load_settings(home=tmp_path / "h")
    raw = synthetic_market(2, 10, seed=0)
    raw.loc[7, "Low"] = -1.0
    raw.to_parquet(tmp_path / "b.parquet", index=False)
    with pytest.raises(E.InvalidValueError) as exc:
        ingest(str(tmp_path / "b.parquet"), settings=settings)
    assert (exc.value.row, exc.value.column, exc.value.row_kind) == (7, "Low", "row")


def test_quarantine_lands_good_rows_and_keeps_bad_ones(tmp_path):
    settings = load_settings(home=tmp_path / "h")
    files = csv_lines(3)
    names = sorted(files)
    files[names[0]][2][HEADER.index("Close")] = "oops"      # line 3
    files[names[1]][4][HEADER.index("High")] = "0.01"       # line 5: high < low
    files["ZZZ_data.csv"] = [["garbage"]]
    for f, ls in files.items():
        (tmp_path / f).write_text("\n".join(",".join(r) for r in ls) + "\n")
    summary = ingest(str(tmp_path), on_error="quarantine", settings=settings)
    assert summary["rows_added"] == 2 * 8 - 2
    assert summary["rows_quarantined"] == 2 and summary["files_quarantined"] == 1
    q = QuarantineTable(settings.lake_dir).read(summary["ingest_id"])
    assert len(q) == 3
    by_file = {r["file"].rsplit("/", 1)[-1]: r for r in q.to_dict("records")}
    assert by_file[names[0]]["row"] == 3 and by_file[names[0]]["column"] == "Close"
    assert "not a number" in by_file[names[0]]["reason"]
    assert "high < low" in by_file[names[1]]["reason"]
    assert "unknown column" in by_file["ZZZ_data.csv"]["reason"]
    versions = BarsTable(settings.lake_dir).versions()
    assert versions[-1]["status"] == "partial" and versions[-1]["rows_quarantined"] == 2


def test_zero_volume_is_accepted_with_a_warning(tmp_path):
    settings = load_settings(home=tmp_path / "h")
    raw = synthetic_market(1, 5, seed=0)
    raw.loc[2, "Volume"] = 0.0
    raw.to_parquet(tmp_path / "z.parquet", index=False)
    summary = ingest(str(tmp_path / "z.parquet"), settings=settings)
    assert summary["rows_added"] == 5
    assert any("zero volume" in w for w in summary["warnings"])
