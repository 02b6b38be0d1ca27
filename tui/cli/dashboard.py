"""``meshctl dashboard``: the live terminal dashboard (a Textual app, :mod:`tui.dashboard`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from tui.cli.common import EXIT_OK, Options

__all__ = ["add_dashboard_parser", "cmd_dashboard"]


def add_dashboard_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add_global_options: Callable[..., None],
) -> None:
    """The ``dashboard`` subcommand."""
    p = sub.add_parser(
        "dashboard",
        help="live traffic, topology, policy, instances, tap and events, with control actions",
        description=(
            "A terminal dashboard over controld's API with the admin token: keys 1-6 switch "
            "views, ? shows the keys, ctrl+p the command palette, q quits. See docs/dashboard.md."
        ),
    )
    add_global_options(p, top=False)
    p.add_argument(
        "--refresh", type=float, default=1.0, metavar="SECONDS", help="refresh period (default 1)"
    )
    p.add_argument(
        "--window",
        type=int,
        default=60,
        metavar="SECONDS",
        help="telemetry window of rates and percentiles (default 60; 10..900)",
    )
    p.set_defaults(run=cmd_dashboard)


def cmd_dashboard(opts: Options, args: argparse.Namespace) -> int:
    """Run the dashboard until the user quits."""
    # Imported here: textual is only needed by this command.
    from tui.dashboard.app import DashboardApp
    from tui.dashboard.http import HttpSource

    source = HttpSource(opts.server, opts.token)
    app = DashboardApp(
        source,
        server=opts.server,
        refresh_s=max(0.2, args.refresh),
        window_s=min(900, max(10, args.window)),
    )
    app.run()  # closes the source when it stops
    return EXIT_OK
