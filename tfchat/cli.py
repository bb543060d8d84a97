"""What every tfchat command shares: quiet start-up, one log format, argument types, exit codes.

Importing this module is cheap (no TensorFlow), so a command can parse its
flags and print `--help` before paying for TensorFlow. A command then calls
`setup(verbose)`, which

* configures Python logging once, in absl's format (`I1126 02:15:13 file.py:12] message`),
  written above any tqdm progress bar instead of through it;
* filters the C++ chatter TensorFlow, TF Text and SentencePiece print on
  stderr by themselves (oneDNN and CUDA probing, absl's "All log messages
  before absl::InitializeLog()" banner, per-op info lines), so that only
  real messages and the progress bar reach the terminal; `--verbose` or
  `TFCHAT_LOG_LEVEL=debug` shows everything;
* imports TensorFlow.

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
import atexit
import errno
import logging
import os
import re
import sys
import threading
from typing import Callable

from tfchat.inference.sampling import MAX_GUIDANCE

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
LOG_LEVEL_ENV = "TFCHAT_LOG_LEVEL"
RAW_STDERR_ENV = "TFCHAT_RAW_STDERR"
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
unit_interval = _typed(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
guidance = _typed(float, lambda v: 0 <= v <= MAX_GUIDANCE, f"a number in 0 .. {MAX_GUIDANCE:g} (1 = off)")
int32 = _typed(int, lambda v: -(2**31) <= v < 2**31, "an integer in -2147483648 .. 2147483647")  # a sampling seed
positive_ints = _typed(lambda t: [int(c) for c in t.split(",")], lambda v: all(c > 0 for c in v),
                       "comma-separated integers > 0")


def port(text: str) -> int:
    value = non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0..65535, got {text}")
    return value


def parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """An ArgumentParser that keeps the module docstring's layout and shows defaults."""

    class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        def _get_help_string(self, action):  # no "(default: None)", "(default: False)" or a second default
            if action.default in (None, False) or "(default" in (action.help or ""):
                return action.help
            return super()._get_help_string(action)

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


# C++ log lines TensorFlow, TF Text and SentencePiece print on their own: absl's format
# ("I0000 00:00:1795662059.360097   17112 port.cc:153] ..."), and a few continuation lines.
_NOISE = re.compile(
    rb"^(?:[IW]\d{4} [\d:.]+\s+\d+ \S+:\d+\] .*"
    rb"|E\d{4} [\d:.]+\s+\d+ \S+:\d+\] (?:failed call to cuInit|oneDNN supports).*"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|To enable the following instructions: .*"
    rb"|normalizer\.cc\(\d+\) LOG\(INFO\) .*)$"
)


class _StderrFilter:
    """Puts a pipe in place of file descriptor 2 and forwards everything but `_NOISE` lines to the real stderr.

    C++ libraries write to fd 2 directly, past Python's logging; filtering the
    descriptor is the one place that catches them all, progress bars and
    Python's own writes keep their order. Segments are split at newlines and
    carriage returns, so a log line that lands in the middle of a progress
    bar is dropped without breaking the bar.
    """

    def __init__(self):
        sys.stderr.flush()
        self.original = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self.read = read
        self.thread = threading.Thread(target=self._forward, name="tfchat-stderr", daemon=True)
        self.thread.start()
        atexit.register(self.close)

    def _forward(self) -> None:
        pending = b""
        while True:
            chunk = os.read(self.read, 65536)
            if not chunk:
                break
            pending += chunk
            out, start = [], 0
            for match in re.finditer(rb"[\r\n]", pending):
                segment = pending[start:match.end()]
                if not _NOISE.match(segment[:-1]):
                    out.append(segment)
                start = match.end()
            pending = pending[start:]
            # A partial segment that cannot be noise (noise starts like a log line) is shown at once.
            if pending and not _could_be_noise(pending):
                out.append(pending)
                pending = b""
            if out:
                os.write(self.original, b"".join(out))
        if pending and not _NOISE.match(pending):
            os.write(self.original, pending)

    def close(self) -> None:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self.original, 2)  # closes the pipe's last write end: the thread drains and stops
        self.thread.join(timeout=5)


def _could_be_noise(partial: bytes) -> bool:
    return bool(re.match(rb"^(?:[IWE]\d{0,4}(?: |$)|WARNING: All|To enable|normalizer)", partial)) or len(partial) < 12


_stderr_filter: _StderrFilter | None = None


def filter_stderr() -> None:
    """Hides C++ start-up and info chatter for the rest of the process (once; not with --verbose)."""
    global _stderr_filter
    if _stderr_filter is None:
        _stderr_filter = _StderrFilter()


def import_tensorflow(quiet: bool = True) -> None:
    """Imports TensorFlow, TF Text (registers its ops) and Keras; `quiet`: without TF's C++ info and
    warning lines. Nothing here starts the TF runtime, so a MultiWorkerMirroredStrategy can still be
    built afterwards."""
    if quiet:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras  # noqa: F401
    import tensorflow  # noqa: F401
    import tensorflow_text  # noqa: F401


def setup(verbose: bool = False) -> None:
    """Logging, the stderr filter, then TensorFlow: call once at the start of a command, after parsing flags.

    `TFCHAT_RAW_STDERR=1` leaves file descriptor 2 alone (the test suite sets it).
    """
    setup_logging(verbose)
    if not is_verbose(verbose) and os.environ.get(RAW_STDERR_ENV) != "1":
        filter_stderr()
    import_tensorflow(quiet=not is_verbose(verbose))
    if not is_verbose(verbose):
        import absl.logging

        absl.logging.set_verbosity(absl.logging.WARNING)


# ----------------------------------------------------------------------------- running a command


_NO_SPACE = re.compile(r"(?:(\S+?)(?:\.tempstate\d+)?; )?No space left on device")


_TRACE_LINE = re.compile(r'File ".*", line \d+, in ')


def tf_error_message(error: BaseException) -> str:
    """The useful line of a TensorFlow error: the message of a failed graph assertion if there is
    one, else its first line without TF's node and function annotations."""
    text = getattr(error, "message", None) or str(error)
    # The message may hold "]" itself ("top_p must be in (0, 1]"): it ends where the next "[" field begins.
    found = re.search(r"assertion failed: \[(.*?)\](?: \[|$)", text, re.M) or re.search(
        r"assertion failed: \[([^\]]*)\]", text)
    if found:
        return found.group(1).split("Condition")[0].strip().rstrip(".").replace("\\'", "'")
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("[[")]
    useful = [ln for ln in lines if ln != "Graph execution error:" and not ln.startswith("Detected at node")
              and not _TRACE_LINE.match(ln) and ln != "<stack traces unavailable>"]  # where the op was defined
    return re.sub(r"\s*\[Op:\w+\]( name: \S*)?$", "", (useful or lines or [type(error).__name__])[0])


def _is_tf_error(error: BaseException) -> bool:
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(error, tf.errors.OpError)


def error_line(error: BaseException) -> str:
    """One line for a failure, naming what to do where we know it. A full disk (ENOSPC, or a
    TensorFlow write failing with "No space left on device") says so, with the file it was writing."""
    no_space = _NO_SPACE.search(str(error))
    if (isinstance(error, OSError) and error.errno == errno.ENOSPC) or no_space:
        filename = getattr(error, "filename", None) or (no_space.group(1) if no_space else None)
        where = f" writing {filename}" if filename else ""
        return f"no space left on the device{where}: free some space (or choose another --out) and re-run the command"
    if _is_tf_error(error):
        return tf_error_message(error)
    return str(error).strip() or type(error).__name__


def run(main: Callable[[], int | None], expected: tuple[type[BaseException], ...] = ()) -> int:
    """Runs a command's body; a known failure prints `error: ...` on one line and returns its exit code.

    `expected`: extra exception types that are user-facing runtime failures
    (ValueError, OSError, RuntimeError and TensorFlow's op errors already are).
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
    except Exception as e:
        if not _is_tf_error(e):
            raise
        log.debug("details", exc_info=True)
        print(f"error: {error_line(e)}", file=sys.stderr)
        return EXIT_FAILURE


def print_next(*commands: str) -> None:
    """The closing lines of a command: what to run next."""
    if commands:
        print("Next:\n" + "\n".join(f"  {c}" for c in commands), file=sys.stderr)
