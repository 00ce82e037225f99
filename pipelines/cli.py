"""What every stage CLI shares: log format, and user errors as one line and exit code 2."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from tqdm.contrib.logging import logging_redirect_tqdm

from manifests.config import ConfigError, configure_logging
from manifests.errors import PATH_ERRORS, ManifestError, error_line

USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, ManifestError, *PATH_ERRORS)


def run_cli(action: Callable[[], str], errors: tuple[type[Exception], ...] = USER_ERRORS) -> int:
    """Run ``action`` and print what it returns (0); print ``error: ...`` for a user error
    (bad input, bad config, an output path that cannot be written: 2), and a line saying
    how to resume on Ctrl-C (130). Anything else is a bug and keeps its traceback."""
    configure_logging(logging.WARNING)
    try:
        with logging_redirect_tqdm():  # log lines above the progress bars, not through them
            result = action()
        print(result)
    except errors as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: what was committed is kept; rerun the same command to resume",
              file=sys.stderr)  # fmt: skip
        return 130
    return 0


def add_network_arguments(p: argparse.ArgumentParser) -> None:
    """The crawl's network flags, named alike in every command that crawls (the remedies
    that a failed crawl prints name them)."""
    p.add_argument(
        "--allow-private-networks",
        action="store_true",
        help="allow private, loopback and link-local addresses (unsafe on the web)",
    )
    p.add_argument(
        "--allow-network",
        action="append",
        default=[],
        metavar="CIDR",
        help="allow one non-public network, e.g. 127.0.0.0/8 (repeatable)",
    )
    p.add_argument(
        "--ignore-robots-directives",
        action="store_true",
        help="download despite X-Robots-Tag noai/noimageai/noindex/noimageindex",
    )
    p.add_argument(
        "--ignore-robots-txt",
        action="store_true",
        help="download paths that a host's robots.txt disallows (it is read by default)",
    )


def network_overrides(args: argparse.Namespace, prefix: str = "") -> list[str]:
    """The network flags as ``--set`` overrides of the crawl's config (under ``prefix``)."""
    overrides = []
    if args.allow_private_networks:
        overrides.append(f"{prefix}fetch.allow_private_networks=true")
    if args.allow_network:
        overrides.append(f"{prefix}fetch.allowed_networks=[{','.join(args.allow_network)}]")
    if args.ignore_robots_directives:
        overrides.append(f"{prefix}fetch.disallowed_robots_directives=[]")
    if args.ignore_robots_txt:
        overrides.append(f"{prefix}fetch.robots_txt=false")
    return overrides
