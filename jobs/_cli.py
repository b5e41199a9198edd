"""What every job shares: logging on stderr, the JSON summary as stdout's last line,
and refusals reported on stderr with a non-zero exit."""
from __future__ import annotations

import json
import logging
import sys
from typing import Callable

from cluster.errors import MlopsError

EXIT_REFUSED = 1
EXIT_USAGE = 2


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def print_summary(summary) -> None:
    sys.stdout.flush()
    print(json.dumps(summary, default=str), flush=True)


def _ray_connected() -> bool:
    ray = sys.modules.get("ray")  # never import Ray for a job that did not use it
    return ray is not None and ray.is_initialized()


def run(main: Callable[[list[str] | None], object], argv: list[str] | None = None,
        check_layout: bool = True) -> int:
    """Run ``main``; print its result as JSON last on stdout; refusals exit 1.
    A lake in an older layout is refused before ``main`` runs (``jobs.maintain``,
    which migrates it, passes ``check_layout=False``)."""
    setup_logging()
    had_ray = _ray_connected()
    try:
        from cluster.config import get_settings
        from cluster.ray_env import check_home_for_job
        check_home_for_job(get_settings())
        if check_layout:
            from cluster.lake.layout import require_current
            require_current(get_settings().lake_dir)
        summary = main(argv)
    except MlopsError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return EXIT_REFUSED
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    finally:
        if not had_ray and _ray_connected():
            # Ray copies its workers' stdout to ours as it arrives; a line printed after
            # the summary would break "JSON last". Disconnect first (Serve and a cluster
            # started with `ray start` live on; a Ray this job started ends with it anyway).
            sys.modules["ray"].shutdown()
    if summary is not None:
        print_summary(summary)
    return 0
