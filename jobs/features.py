"""python -m jobs.features [--incremental] [--instruments A,B,...] [--output FILE.parquet]
python -m jobs.features --export-qlib DIR

Computes or updates the features table (indicators + Alpha158 + label) from the
bars, and prints a JSON summary last on stdout; progress on stderr.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cluster.config import get_settings
from cluster.features.pipeline import FeaturePipeline
from cluster.features.qlib_bridge import export_qlib
from cluster.lake.bars import BarsTable
from cluster.lake.features import FeaturesTable
from cluster.progress import progress_bar
from jobs._cli import run


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m jobs.features", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--incremental", action="store_true",
                   help="compute only what changed since the factor cache's data version")
    p.add_argument("--instruments", help="comma-separated instruments (default: all)")
    p.add_argument("--output", type=Path, help="also write the selected features to a parquet "
                   "file (datetime, instrument, Alpha158, LABEL0, indicators)")
    p.add_argument("--export-qlib", type=Path, metavar="DIR",
                   help="write the bars as a Qlib provider directory and exit")
    p.add_argument("--local", action="store_true", help="compute in process, without Ray")
    p.add_argument("--follow", action="store_true",
                   help="keep running: an incremental computation for every data_synced "
                        "event published after start (Ctrl-C to stop)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    settings = get_settings()
    instruments = [i.strip() for i in args.instruments.split(",") if i.strip()] \
        if args.instruments else None
    if args.export_qlib:
        bars = BarsTable(settings.lake_dir)
        frame = bars.read(instruments=instruments)
        export_qlib(frame, args.export_qlib)
        return {"export_qlib": str(args.export_qlib), "data_version": bars.data_version(),
                "instruments": int(frame["instrument"].nunique()), "rows": int(len(frame))}
    if args.follow:
        return follow(settings)
    pipeline = FeaturePipeline(settings)
    with progress_bar(total=100, desc="features", unit="%") as bar:
        def progress(pct: float, message: str) -> None:
            bar.n = pct
            bar.set_postfix_str(message)
            bar.refresh()
        summary = pipeline.run(incremental=args.incremental, instruments=instruments,
                               progress=progress, use_ray=False if args.local else None)
    if args.output:
        frame = FeaturesTable(settings.lake_dir).read(instruments=instruments,
                                                      feature_set=summary["feature_set"])
        frame = frame.drop(columns=["feature_set", "data_version"]).rename(
            columns={"date": "datetime"})
        frame = frame[["datetime", "instrument"]
                      + [c for c in frame.columns if c not in ("datetime", "instrument")]]
        args.output.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(args.output, index=False)
        summary["output"] = str(args.output)
    return summary


def follow(settings) -> dict:
    import json
    import threading

    from cluster.events import get_bus
    from cluster.features.service import follow_data_synced
    bus = get_bus(settings.lake_dir)
    stop = threading.Event()
    last: dict = {}

    def show(summary: dict) -> None:
        last.update(summary)
        print(json.dumps(summary), file=sys.stderr, flush=True)
    try:
        follow_data_synced(bus, bus.last_offset(), settings, stop=stop, on_summary=show)
    except KeyboardInterrupt:
        stop.set()
    return last or {"followed": True}


if __name__ == "__main__":
    sys.exit(run(main))
