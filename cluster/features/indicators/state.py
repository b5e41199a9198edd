"""Indicator state of many instruments: fixed-width numeric arrays, one row each.

A row holds what the kernel needs to continue an instrument exactly where its
last run stopped:

* ``n``: rows seen; ``last``: its last date (int64 nanoseconds);
* ``tail``: the last rows each column needs, one segment per ``TAIL_COLUMNS``
  entry (raw high, low, close, vwap, volume; derived typical price, log return,
  fast %K, slow %K), each oldest first, zero-padded at the front for a short
  history (padding is never read); ``tail_layout(params)`` gives the segment
  lengths, the longest is ``indicator_lookback(params)``;
* ``carry``: the recursive state, named by ``state_fields(params)``: SMA and
  BBANDS running sums, EMA values, RSI average gain/loss, ATR, SAR trend/SAR/EP/AF,
  STOCH smoothing sums, OBV, A/D, the VWAP and HV compensated sums.

Rows are sorted by instrument. ``spec`` is the fingerprint of the params the
states were made with; an update with other params is refused. States are
values: every operation returns a new object and never writes to its inputs.
``to_arrow``/``from_arrow`` give the table form a cache stores.
"""
from __future__ import annotations

import json
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa

from cluster.config import IndicatorParams
from cluster.features.indicators.spec import STATE_VERSION, TAIL_COLUMNS, spec as spec_of

_META_KEY = b"indicator_state"


class IndicatorStates:
    __slots__ = ("spec", "names", "n", "last", "tail", "carry")

    def __init__(self, spec: str, names, n, last, tail, carry):
        names = np.asarray(names, dtype=str) if len(names) else np.zeros(0, dtype="<U1")
        n = np.asarray(n, dtype=np.int64)
        last = np.asarray(last, dtype=np.int64)
        tail = np.asarray(tail, dtype=np.float64)
        carry = np.asarray(carry, dtype=np.float64)
        m = len(names)
        if not (n.shape == last.shape == (m,) and tail.ndim == carry.ndim == 2
                and len(tail) == len(carry) == m):
            raise ValueError(f"indicator states: {m} names but arrays of shapes "
                             f"{n.shape}, {last.shape}, {tail.shape}, {carry.shape}")
        if m > 1 and not (names[1:] > names[:-1]).all():
            order = np.argsort(names, kind="stable")
            names, n, last, tail, carry = (a[order] for a in (names, n, last, tail, carry))
            if (names[1:] == names[:-1]).any():
                dup = names[1:][names[1:] == names[:-1]][0]
                raise ValueError(f"indicator states: instrument {dup!r} appears twice")
        self.spec, self.names, self.n, self.last = spec, names, n, last
        self.tail, self.carry = tail, carry

    @classmethod
    def empty(cls, params: IndicatorParams | None = None) -> "IndicatorStates":
        """No instrument (an empty state of any params continues none)."""
        s = spec_of(params)
        return cls(s.fingerprint, [], np.zeros(0, np.int64), np.zeros(0, np.int64),
                   np.zeros((0, s.width)), np.zeros((0, len(s.fields))))

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name) -> bool:
        return bool(self.rows([name])[0] >= 0)

    def __repr__(self) -> str:
        return f"IndicatorStates({len(self)} instruments, spec {self.spec})"

    def rows(self, names: Iterable[str]) -> np.ndarray:
        """Row of each name (-1 where it has no state)."""
        want = np.asarray(list(names) if not isinstance(names, np.ndarray) else names,
                          dtype=str)
        if not len(self.names) or not len(want):
            return np.full(len(want), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.names, want), len(self.names) - 1)
        return np.where(self.names[pos] == want, pos, -1).astype(np.int64)

    def _select(self, rows: np.ndarray) -> "IndicatorStates":
        return IndicatorStates(self.spec, self.names[rows], self.n[rows], self.last[rows],
                               self.tail[rows], self.carry[rows])

    def take(self, names: Iterable[str]) -> "IndicatorStates":
        """The states of ``names``; a name without one is a ``KeyError``."""
        names = list(names)
        rows = self.rows(names)
        if (rows < 0).any():
            missing = [nm for nm, r in zip(names, rows) if r < 0]
            raise KeyError(f"no indicator state for {missing[:10]}")
        return self._select(rows)

    def drop(self, names: Iterable[str]) -> "IndicatorStates":
        """All states but those of ``names``."""
        keep = np.ones(len(self), dtype=bool)
        rows = self.rows(names)
        keep[rows[rows >= 0]] = False
        return self._select(np.flatnonzero(keep))

    def merge(self, *others: "IndicatorStates") -> "IndicatorStates":
        """These states with those of ``others`` added or replacing them (a later
        one wins). An empty operand is ignored, whatever its params."""
        parts = [p for p in (self, *others) if len(p)]
        if not parts:
            return self if not others else others[-1]
        specs = {p.spec for p in parts}
        if len(specs) > 1:
            raise ValueError(f"cannot merge indicator states of other params: {sorted(specs)}")
        if len(parts) == 1:
            return parts[0]
        names = np.concatenate([p.names for p in parts])
        # the last occurrence of each name wins: keep it, drop the earlier ones
        rev = names[::-1]
        _, first_in_rev = np.unique(rev, return_index=True)
        keep = np.sort(len(names) - 1 - first_in_rev)
        return IndicatorStates(parts[0].spec, names[keep],
                               *(np.concatenate([getattr(p, a) for p in parts])[keep]
                                 for a in ("n", "last", "tail", "carry")))

    def equals(self, other: "IndicatorStates") -> bool:
        """Same params, instruments and bit-identical numbers."""
        return (self.spec == other.spec and np.array_equal(self.names, other.names)
                and np.array_equal(self.n, other.n) and np.array_equal(self.last, other.last)
                and self.tail.shape == other.tail.shape
                and self.carry.shape == other.carry.shape
                and np.array_equal(self.tail.view(np.int64), other.tail.view(np.int64))
                and np.array_equal(self.carry.view(np.int64), other.carry.view(np.int64)))

    def check(self, params: IndicatorParams | None) -> None:
        """Refuse to continue states made with other params (an empty one continues
        nothing, so it fits any)."""
        if len(self) and self.spec != spec_of(params).fingerprint:
            raise ValueError("indicator states were made with other indicator params or "
                             f"another state version (spec {self.spec}, these params give "
                             f"{spec_of(params).fingerprint})")

    # -- table form ----------------------------------------------------------
    def to_arrow(self) -> pa.Table:
        """One row per instrument: instrument, n, last_date, tail and carry as
        fixed-size lists of float64; the spec and state version in the metadata."""
        m, width, nf = len(self), self.tail.shape[1], self.carry.shape[1]
        meta = {"version": STATE_VERSION, "spec": self.spec}
        return pa.table({
            "instrument": pa.array(self.names.tolist(), pa.string()),
            "n": pa.array(self.n, pa.int64()),
            "last_date": pa.array(self.last.view("datetime64[ns]"), pa.timestamp("ns")),
            "tail": pa.FixedSizeListArray.from_arrays(
                pa.array(self.tail.reshape(m * width)), width),
            "carry": pa.FixedSizeListArray.from_arrays(
                pa.array(self.carry.reshape(m * nf)), nf),
        }).replace_schema_metadata({_META_KEY: json.dumps(meta)})

    @classmethod
    def from_arrow(cls, table: pa.Table) -> "IndicatorStates":
        meta = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
        if meta.get("version") != STATE_VERSION:
            raise ValueError(f"indicator states of state version {meta.get('version')!r}; "
                             f"this code reads version {STATE_VERSION}")

        def matrix(name):
            col = table.column(name).combine_chunks()
            width = col.type.list_size
            return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), width)
        return cls(meta["spec"], table.column("instrument").to_pylist(),
                   table.column("n").to_numpy(),
                   table.column("last_date").cast(pa.int64()).to_numpy(),
                   matrix("tail"), matrix("carry"))


def describe_state(states: IndicatorStates, name: str,
                   params: IndicatorParams | None = None) -> dict:
    """One instrument's state with named fields: ``n``, ``last_date``, per-column
    ``tail`` lists and the ``carry`` values by field name."""
    states.check(params)
    s = spec_of(params)
    row = states.take([name])
    tail = row.tail[0].tolist()
    last = pd.Timestamp(int(row.last[0]))
    return {"spec": states.spec, "n": int(row.n[0]),
            "last_date": last.date().isoformat() if last == last.normalize() else
            last.isoformat(),
            "tail": {c: tail[o:o + k] for c, o, k in zip(TAIL_COLUMNS, s.seg_off, s.seg_len)},
            "carry": dict(zip(s.fields, row.carry[0].tolist()))}
