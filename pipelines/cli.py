"""What every stage CLI shares: log format, and user errors as one line and exit code 2."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from manifests.config import ConfigError
from manifests.errors import PATH_ERRORS, ManifestError, error_line

USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, ManifestError, *PATH_ERRORS)


def run_cli(action: Callable[[], str], errors: tuple[type[Exception], ...] = USER_ERRORS) -> int:
    """Run ``action`` and print what it returns (0); print ``error: ...`` for a user error
    (bad input, bad config, an output path that cannot be written: 2), and a line saying
    how to resume on Ctrl-C (130). Anything else is a bug and keeps its traceback."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        print(action())
    except errors as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: what was committed is kept; rerun the same command to resume",
              file=sys.stderr)  # fmt: skip
        return 130
    return 0
