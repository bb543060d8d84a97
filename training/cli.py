"""What both training commands do around their job: logging, errors, exit codes, the summary."""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable

from training.loop import TrainingError


def run(job: Callable[[], dict], out: str, name: str) -> int:
    """Runs `job`; a user error prints one clear line and exits non-zero, never a stack trace."""
    from training.jobs import print_summary

    start = time.perf_counter()
    try:
        metrics = job()
    except KeyboardInterrupt as e:
        print(f"\nInterrupted ({e or 'Ctrl-C'}); the checkpoint in {out}/checkpoints is saved: "
              "re-run the same command to resume.", file=sys.stderr)
        return 130
    except (TrainingError, ValueError, FileNotFoundError, FileExistsError, PermissionError) as e:
        logging.debug("details", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        return 1
    print_summary(metrics, out, name, time.perf_counter() - start)
    return 0
