"""What every tfchat command shares: quiet start-up, one log format, argument types, exit codes.

Importing this module is cheap (no TensorFlow), so a command can parse its
flags and print `--help` before paying for TensorFlow. A command then calls
`setup(verbose)`, which

* configures Python logging once, in absl's format (`I1126 02:15:13 file.py:12] message`),
  written above any tqdm progress bar instead of through it;
* imports TensorFlow with its C++ start-up chatter (oneDNN, CUDA probing,
  absl's "All log messages before absl::InitializeLog()" banner) captured:
  shown again only with `--verbose`, `TFCHAT_LOG_LEVEL=debug`, or when the
  import fails.

`run(main)` turns failures into one line and an exit code: 2 for usage
errors (`UsageError`, argparse), 1 for runtime failures, 130 for Ctrl-C.

Example:

>>> positive_int("3")
3
>>> run(lambda: 0)
0
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys
import tempfile
from typing import Callable

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
LOG_LEVEL_ENV = "TFCHAT_LOG_LEVEL"
LOG_FORMAT = "%(levelname).1s%(asctime)s %(filename)s:%(lineno)d] %(message)s"
LOG_DATEFMT = "%m%d %H:%M:%S"

log = logging.getLogger("tfchat")


class UsageError(ValueError):
    """A wrong flag or flag combination: exit code 2."""


# ----------------------------------------------------------------------------- argument types


def _typed(kind, test, expected: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    parse.__name__ = expected
    return parse


positive_int = _typed(int, lambda v: v > 0, "an integer > 0")
non_negative_int = _typed(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _typed(float, lambda v: v > 0 and v != float("inf"), "a number > 0")
non_negative_float = _typed(float, lambda v: 0 <= v < float("inf"), "a number >= 0")
probability = _typed(float, lambda v: 0 < v <= 1, "a number in (0, 1]")
fraction = _typed(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def port(text: str) -> int:
    value = non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0..65535, got {text}")
    return value


def parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """An ArgumentParser that keeps the module docstring's layout and shows defaults."""

    class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        pass

    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=Formatter)
    p.add_argument("-v", "--verbose", action="store_true",
                   help=f"debug logging and TensorFlow's own start-up messages (or {LOG_LEVEL_ENV}=debug)")
    return p


# ----------------------------------------------------------------------------- logging and TF start-up


class _TqdmHandler(logging.Handler):
    """Writes records to the current `sys.stderr` through `tqdm.write`, so an open progress bar is
    redrawn below them instead of being broken by them."""

    def emit(self, record):
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001  (logging must never raise)
            self.handleError(record)


def is_verbose(verbose: bool = False) -> bool:
    return verbose or os.environ.get(LOG_LEVEL_ENV, "").lower() in ("debug", "verbose", "1")


def setup_logging(verbose: bool = False) -> None:
    """One format for every command; debug with `verbose` or TFCHAT_LOG_LEVEL=debug."""
    verbose = is_verbose(verbose)
    level = logging.DEBUG if verbose else getattr(logging, os.environ.get(LOG_LEVEL_ENV, "INFO").upper(), logging.INFO)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _TqdmHandler):
            root.removeHandler(handler)
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATEFMT))
    root.addHandler(handler)
    root.setLevel(level)
    # Libraries that log at INFO about their own plumbing.
    for name in ("absl", "tensorflow", "h5py", "httpx", "jieba"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)


@contextlib.contextmanager
def _captured_stderr_fd():
    """Sends file descriptor 2 (C++ logging) to a temporary file; yields a function returning what was caught."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lambda: (sink.seek(0), sink.read().decode("utf-8", "replace"))[1]
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def import_tensorflow(verbose: bool = False):
    """Imports TensorFlow (and TF Text, Keras) with their start-up messages hidden unless verbose.

    Nothing here initialises the TF runtime (listing physical devices does
    not), so a MultiWorkerMirroredStrategy can still be built afterwards.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    if is_verbose(verbose):
        import tensorflow as tf

        return tf
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _captured_stderr_fd() as caught:
        try:
            import tensorflow as tf
            import tensorflow_text  # noqa: F401  (registers ops; logs like TF)
            import keras  # noqa: F401

            tf.config.list_physical_devices()  # CUDA probing logs here, once
        except BaseException:
            text = caught()
            sys.stderr.write(text)
            raise
    return tf


def setup(verbose: bool = False) -> None:
    """Logging, then a quiet TensorFlow import: call once at the start of a command, after parsing flags."""
    setup_logging(verbose)
    import_tensorflow(verbose)
    if not is_verbose(verbose):
        import absl.logging

        absl.logging.set_verbosity(absl.logging.WARNING)


# ----------------------------------------------------------------------------- running a command


def error_line(error: BaseException) -> str:
    """One line for a failure, naming what to do where we know it."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        where = f" writing {error.filename}" if error.filename else ""
        return f"no space left on the device{where}: free some space (or choose another --out) and re-run the command"
    return str(error).strip() or type(error).__name__


def run(main: Callable[[], int | None], expected: tuple[type[BaseException], ...] = ()) -> int:
    """Runs a command's body; a known failure prints `error: ...` on one line and returns its exit code.

    `expected`: extra exception types that are user-facing runtime failures
    (ValueError, OSError and RuntimeError already are).
    """
    try:
        return int(main() or 0)
    except KeyboardInterrupt as e:
        print(f"\nInterrupted{f' ({e})' if str(e) else ''}.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UsageError as e:
        print(f"error: {error_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, OSError, RuntimeError, *expected) as e:
        log.debug("details", exc_info=True)
        print(f"error: {error_line(e)}", file=sys.stderr)
        return EXIT_FAILURE


def print_next(*commands: str) -> None:
    """The closing lines of a command: what to run next."""
    if commands:
        print("Next:\n" + "\n".join(f"  {c}" for c in commands), file=sys.stderr)
