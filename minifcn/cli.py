"""What the command-line entry points share: one-line errors instead of tracebacks."""
from __future__ import annotations

import argparse
import math
import os
import sys


class CLIError(Exception):
    """An error to print as one line and exit with status 2."""


def run_main(main, argv=None):
    """Call ``main(argv)``; turn bad input (ValueError, OSError, CLIError, a missing GPU)
    into ``error: ...`` on stderr and exit status 2, and running out of memory into a line
    that says so (sizes too large for this machine), with no traceback."""
    from .backend import DeviceUnavailable
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except MemoryError as e:
        print(f"error: out of memory ({str(e) or 'MemoryError'}): the sizes asked for need more "
              "memory than this machine has; try smaller ones", file=sys.stderr)
        return 2
    except Exception as e:
        if (not isinstance(e, (CLIError, ValueError, OSError, DeviceUnavailable))
                and type(e).__name__ != "TrainingError"):
            raise
        msg = str(e) or type(e).__name__
        if isinstance(e, FileNotFoundError) and e.filename and e.filename not in msg:
            msg = f"{msg}: {e.filename}"
        print(f"error: {msg}", file=sys.stderr)
        return 2


def size_arg(text):
    """'500x400' -> (500, 400); '500' -> (500, 500)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 500 or 500x400, got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, like 500 or 500x400, got {text!r}")
    return tuple(parts)


def int_at_least(minimum, what=None):
    """An argparse type: an int of at least ``minimum``. Errors say what was expected
    (``what``, e.g. "a positive int"; by default "an int >= minimum") and what came."""
    what = what or f"an int >= {minimum}"

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    parse.__name__ = f"int_at_least_{minimum}"      # argparse names the type in its errors
    return parse


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def same_file(a, b):
    """Do paths ``a`` and ``b`` name one file (links, ``..`` and ``~`` seen through)? Where
    either does not exist yet, whether they are spelled as the same place."""
    a, b = os.path.expanduser(a), os.path.expanduser(b)
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b))


def check_output_dir(path, flag):
    """Can ``path`` be made (or used) as a directory to write into: it is not a file, and
    the nearest folder that exists on its way takes new entries (tried, with a folder made
    and removed at once: permission bits do not stop root, and some folders, such as
    /proc, take no new entries)."""
    if not path:
        raise ValueError(f"{flag} is empty; give a directory for the outputs")
    if os.path.lexists(path) and not os.path.isdir(path):
        what = "a link to nothing" if os.path.islink(path) else "a file"
        raise ValueError(f"{flag} {path} is {what}; give a directory for the outputs")
    existing = os.path.abspath(path)
    while not os.path.isdir(existing):
        parent = os.path.dirname(existing)
        if os.path.lexists(existing) or parent == existing:      # a file (or link) on the way
            raise ValueError(f"{flag} {path}: {existing} is not a directory")
        existing = parent
    probe_writable(existing, f"{flag} {path}")


WRITE_CHECK_PREFIX = ".write-check-"    # the probes' names (a run directory's check skips them)


def probe_writable(folder, what):
    """Make and remove a file in ``folder``, or say ``what`` cannot be written there:
    permission bits do not stop root, and some folders, such as /proc, take no new files.
    The probe's name is unique, so no other writer's file is touched."""
    import tempfile
    try:
        fd, name = tempfile.mkstemp(prefix=WRITE_CHECK_PREFIX, dir=folder)
    except OSError as e:
        raise ValueError(f"{what}: cannot write in {folder} ({e.strerror})") from None
    try:
        os.close(fd)
    finally:
        os.remove(name)
