"""The `appliance` command: parse arguments, load the configuration, start what was asked."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from appliance import __version__
from appliance.config import Settings, load_settings
from appliance.errors import ApplianceError
from appliance.logs import setup_logging
from appliance.paths import resolve_paths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appliance", description="Edge inference appliance for clinics (offline)."
    )
    parser.add_argument("--config", type=Path, help="YAML configuration file (default: built-in)")
    parser.add_argument("--version", action="version", version=f"appliance {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", help="start every role on this machine").set_defaults(func=cmd_run)
    sub.add_parser("receiver", help="run the DICOM receiver role").set_defaults(func=cmd_receiver)
    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("file", type=Path)
    check.set_defaults(func=cmd_check_config)
    _add_scu_commands(sub)
    sub.add_parser("status", help="store counts, disk and queue depth").set_defaults(
        func=cmd_status
    )
    from appliance import bench  # these rooms register their own sub-commands
    from appliance.runtime import commands as model_commands

    bench.register(sub)
    model_commands.register(sub)  # model, infer
    return parser


def _add_scu_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    send = sub.add_parser("send", help="C-STORE files to a DICOM peer")
    send.add_argument("files", nargs="+", type=Path, help="files or folders of DICOM files")
    send.add_argument("--to", required=True, metavar="HOST:PORT")
    send.add_argument("--aet", default="APPLIANCE-SCU", help="our (calling) AE title")
    send.add_argument("--aec", default="APPLIANCE", help="the peer's (called) AE title")
    send.set_defaults(func=cmd_send)
    echo = sub.add_parser("echo", help="C-ECHO a DICOM peer")
    echo.add_argument("peer", metavar="HOST:PORT")
    echo.add_argument("--aet", default="APPLIANCE-SCU")
    echo.add_argument("--aec", default="APPLIANCE")
    echo.set_defaults(func=cmd_echo)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ApplianceError as exc:
        print(f"appliance: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    setup_logging(settings.logging.level)
    return settings


def cmd_run(args: argparse.Namespace) -> int:
    from appliance import supervisor

    settings = _settings(args)
    paths = resolve_paths(settings)
    cfg = settings.receiver
    print(
        f"appliance: starting; DICOM port {cfg.port} (AE {cfg.ae_title!r}), "
        f"data in {paths.data_dir}. Ctrl-C stops.",
        flush=True,
    )
    return supervisor.run(args.config)


def cmd_receiver(args: argparse.Namespace) -> int:
    from appliance.receiver.role import serve

    settings = _settings(args)
    return serve(settings, resolve_paths(settings))


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = load_settings(args.file)
    paths = resolve_paths(settings)
    print(
        f"{args.file}: OK (receiver {settings.receiver.ae_title}@{settings.receiver.port}, "
        f"data in {paths.data_dir})"
    )
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    from appliance.dicomout.scu import Peer, parse_peer, send

    host, port = parse_peer(args.to)
    files = _expand(args.files)
    if not files:
        raise ApplianceError("no files to send")
    failed = 0
    for result in send(files, Peer(host, port, args.aec, args.aet)):
        print(f"{'ok  ' if result.ok else 'FAIL'} {result.path} {result.message}".rstrip())
        failed += not result.ok
    print(f"sent {len(files) - failed} of {len(files)} file(s) to {args.aec}@{host}:{port}")
    return 1 if failed else 0


def cmd_echo(args: argparse.Namespace) -> int:
    from appliance.dicomout.scu import Peer, echo, parse_peer

    host, port = parse_peer(args.peer)
    status = echo(Peer(host, port, args.aec, args.aet))
    print(f"C-ECHO {args.aec}@{host}:{port}: status 0x{status:04X}")
    return 0 if status == 0 else 1


def cmd_status(args: argparse.Namespace) -> int:
    from appliance.store import open_store

    settings = _settings(args)
    store = open_store(settings)
    summary = store.summary()
    free = store.spool.free_bytes() // 2**20
    floor = settings.storage.free_space_floor_mb
    print(f"data folder: {store.paths.data_dir}")
    print(f"disk free:   {free} MiB (floor {floor} MiB){'  BELOW FLOOR' if free < floor else ''}")
    print(
        f"patients {summary.patients}, studies {summary.studies}, "
        f"instances {summary.instances} (missing {summary.missing_instances})"
    )
    jobs = ", ".join(f"{k} {v}" for k, v in sorted(summary.jobs.items())) or "none"
    print(f"jobs:        {jobs}; queue depth {summary.queue_depth}")
    print(f"last image:  {summary.last_received_at or 'never'}")
    return 0


def _expand(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise ApplianceError(f"{path}: no such file or folder")
    return files
