"""The predictions table's monitoring columns: nullable, old files stay readable."""
from __future__ import annotations

import time

import pyarrow as pa
from deltalake import write_deltalake

from cluster.lake import predictions as P


def test_old_predictions_files_stay_readable_after_the_new_columns(tmp_path):
    old_schema = pa.schema(list(P.SCHEMA)[:10])
    now = time.time()
    old = P.rows_table([(now, "r0", None, "m/1", "AAA", "2020-01-02", 3, 0.1, 1.0, False),
                        (now, "r0", None, "m/2", "AAA", "2020-01-02", 3, 0.2, 1.0, True)])
    write_deltalake(str(P.path(tmp_path)), old.select(old_schema.names).cast(old_schema))
    new = P.rows_table([(now, "r1", "k", "m/1", "BBB", "2020-01-03", 4, 0.3, 2.0, False,
                         9, "m/2", "abc", 7, "served")])
    dt = P.append(tmp_path, new)
    assert not P.needs_schema_merge(dt)
    frame = P.read_predictions(tmp_path).sort_values("request_id")
    assert frame.source.tolist() == ["served", "shadow", "served"]
    assert frame.arm.isna().tolist() == [True, True, False]
    last = frame.iloc[-1]
    assert (last.features_version, last.arm, last.rollout_id, last.revision) == (9, "m/2",
                                                                               "abc", 7)
    only = P.read_predictions(tmp_path, start="2020-01-03", columns=["version", "source"])
    assert list(only.columns) == ["version", "source"] and len(only) == 1
