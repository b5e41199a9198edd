"""The lifecycle ledger: every state move of a registered model, numbered per model in
a table of the registry's own database, so that moves are atomic across processes.

MLflow has no compare-and-set on tags: two processes that read a version's state
and then write its next one can both succeed. Here a move (which may change several
versions at once: promotion deprecates the previous production version in the same
step) is first claimed as row ``(model, seq)`` of ``mlops_lifecycle``, whose
primary key lets exactly one of two racing processes insert a given ``seq``. The
winner then mirrors the move into the version tags (state, numbered transition,
aliases) and marks the row applied; the loser re-reads and is refused if the
winner moved one of its versions (or retries when it moved another). A process that
dies between claim and mirror leaves an unapplied row, which the next move of that
model rolls forward first (writing the same tags twice is harmless).

SQLite and PostgreSQL (any SQLAlchemy URL MLflow itself accepts) hold the table
beside MLflow's; a row is small and a model gets a handful a day.
"""
from __future__ import annotations

import json
import logging

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

TABLE = "mlops_lifecycle"
_metadata = sa.MetaData()
_moves = sa.Table(
    TABLE, _metadata,
    sa.Column("model", sa.String(256), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("record", sa.Text, nullable=False),      # JSON list of per-version moves
    sa.Column("applied", sa.Boolean, nullable=False, default=False),
)


def supports(uri: str) -> bool:
    return uri.split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql", "mysql", "mssql")


class Ledger:
    def __init__(self, uri: str):
        kwargs: dict = {}
        if uri.startswith("sqlite"):
            # one file shared with MLflow: wait for its write lock instead of failing
            kwargs = {"connect_args": {"timeout": 60}, "poolclass": NullPool}
        else:
            kwargs = {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 2}
        self.engine = sa.create_engine(uri, **kwargs)
        self._ready = False

    def _ensure(self) -> None:
        if self._ready:
            return
        try:
            _metadata.create_all(self.engine, checkfirst=True)
        except sa.exc.SQLAlchemyError:
            # two processes creating it at once: one wins; the table exists either way
            if not sa.inspect(self.engine).has_table(TABLE):
                raise
        self._ready = True

    def head(self, model: str) -> int:
        """The number of the model's latest claimed move (0 when none)."""
        self._ensure()
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(_moves.c.seq))
                                    .where(_moves.c.model == model)).scalar() or 0)

    def claim(self, model: str, seq: int, record: list[dict]) -> bool:
        """Insert move ``seq``; False when another process holds that number already."""
        self._ensure()
        try:
            with self.engine.begin() as conn:
                conn.execute(_moves.insert().values(model=model, seq=seq,
                                                    record=json.dumps(record), applied=False))
            return True
        except SqlIntegrityError:
            return False

    def since(self, model: str, seq: int) -> list[tuple[int, list[dict]]]:
        """Moves after ``seq``, in order."""
        self._ensure()
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(_moves.c.seq, _moves.c.record)
                                .where(_moves.c.model == model, _moves.c.seq > seq)
                                .order_by(_moves.c.seq)).all()
        return [(int(r.seq), json.loads(r.record)) for r in rows]

    def unapplied(self, model: str) -> list[tuple[int, list[dict]]]:
        self._ensure()
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(_moves.c.seq, _moves.c.record)
                                .where(_moves.c.model == model, _moves.c.applied.is_(False))
                                .order_by(_moves.c.seq)).all()
        return [(int(r.seq), json.loads(r.record)) for r in rows]

    def mark_applied(self, model: str, seq: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(_moves.update().where(_moves.c.model == model, _moves.c.seq == seq)
                         .values(applied=True))

    def dispose(self) -> None:
        self.engine.dispose()
