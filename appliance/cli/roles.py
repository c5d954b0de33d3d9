"""`appliance run`, `receiver`, `worker`, `sender` and `ui`: start one role, or all of them.

Each role's module is imported by its own command only: the receiver has no need of Flask,
nor the UI of the runtime.
"""

from __future__ import annotations

import argparse

from appliance.cli.common import Subcommands, settings_from
from appliance.paths import resolve_paths


def register(sub: Subcommands) -> None:
    """Add the role commands to the CLI's sub-commands."""
    sub.add_parser("run", help="start every role on this machine").set_defaults(func=cmd_run)
    sub.add_parser("receiver", help="run the DICOM receiver role").set_defaults(func=cmd_receiver)
    sub.add_parser("worker", help="run the worker role (analyses images)").set_defaults(
        func=cmd_worker
    )
    sub.add_parser(
        "sender", help="run the sender role (delivers results to the PACS)"
    ).set_defaults(func=cmd_sender)
    sub.add_parser("ui", help="run the touchscreen web UI role").set_defaults(func=cmd_ui)


def cmd_run(args: argparse.Namespace) -> int:
    from appliance import supervisor

    settings = settings_from(args)
    paths = resolve_paths(settings)
    cfg = settings.receiver
    ui = settings.ui
    host = "127.0.0.1" if ui.bind_address in ("0.0.0.0", "::") else ui.bind_address
    print(
        f"appliance: starting; UI at http://{host}:{ui.port}/, DICOM port {cfg.port} "
        f"(AE {cfg.ae_title!r}), data in {paths.data_dir}. Ctrl-C stops.",
        flush=True,
    )
    return supervisor.run(args.config)


def cmd_receiver(args: argparse.Namespace) -> int:
    from appliance.receiver.role import serve

    settings = settings_from(args)
    return serve(settings, resolve_paths(settings))


def cmd_worker(args: argparse.Namespace) -> int:
    from appliance.phantoms.generated_source import OPENERS
    from appliance.worker.role import serve

    settings = settings_from(args)
    return serve(settings, resolve_paths(settings), OPENERS)  # the demo's sources too


def cmd_sender(args: argparse.Namespace) -> int:
    from appliance.sender.role import serve

    settings = settings_from(args)
    return serve(settings, resolve_paths(settings))


def cmd_ui(args: argparse.Namespace) -> int:
    from appliance.web.role import serve

    settings = settings_from(args)
    return serve(settings, resolve_paths(settings))
