"""The `appliance` command: parse arguments, load the configuration, start what was asked."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from appliance import __version__
from appliance.config import Settings, load_settings
from appliance.errors import ApplianceError
from appliance.logs import setup_logging
from appliance.paths import resolve_paths

if TYPE_CHECKING:
    from appliance.store import Store


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appliance", description="Edge inference appliance for clinics (offline)."
    )
    parser.add_argument("--config", type=Path, help="YAML configuration file (default: built-in)")
    parser.add_argument("--version", action="version", version=f"appliance {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", help="start every role on this machine").set_defaults(func=cmd_run)
    sub.add_parser("receiver", help="run the DICOM receiver role").set_defaults(func=cmd_receiver)
    sub.add_parser("worker", help="run the worker role (analyses images)").set_defaults(
        func=cmd_worker
    )
    sub.add_parser("ui", help="run the touchscreen web UI role").set_defaults(func=cmd_ui)
    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("file", type=Path)
    check.set_defaults(func=cmd_check_config)
    _add_scu_commands(sub)
    status = sub.add_parser("status", help="store counts, disk, queue and the worklist")
    status.add_argument("--studies", type=int, default=10, help="worklist rows to show")
    status.set_defaults(func=cmd_status)
    from appliance import bench  # these rooms register their own sub-commands
    from appliance.capture import commands as capture_commands
    from appliance.runtime import commands as model_commands

    bench.register(sub)
    model_commands.register(sub)  # model, infer
    capture_commands.register(sub)  # capture probe
    _add_demo_data_command(sub)
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


def _add_demo_data_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # Defined here rather than in appliance.phantoms, whose import loads OpenCV: every
    # command parses these definitions, only demo-data needs the phantoms.
    parser = sub.add_parser(
        "demo-data",
        help="write synthetic DICOM images (chest X-ray, ultrasound) to try the appliance",
        description="Write a small set of synthetic DICOM files with known truth into DIR "
        "(created; refused when not empty unless --force), with index.csv and README.txt.",
    )
    parser.add_argument("folder", type=Path, metavar="DIR")
    parser.add_argument(
        "--chest-rows", type=int, default=2048, help="radiograph height (default 2048)"
    )
    parser.add_argument("--seed", type=int, default=1, help="which set to draw (default 1)")
    parser.add_argument("--force", action="store_true", help="write into a non-empty DIR")
    parser.set_defaults(func=cmd_demo_data)


def cmd_demo_data(args: argparse.Namespace) -> int:
    from appliance.phantoms import demo

    return demo.cmd_demo_data(args)


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

    settings = _settings(args)
    return serve(settings, resolve_paths(settings))


def cmd_worker(args: argparse.Namespace) -> int:
    from appliance.worker.role import serve

    settings = _settings(args)
    return serve(settings, resolve_paths(settings))


def cmd_ui(args: argparse.Namespace) -> int:
    from appliance.web.role import serve

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
    _print_worklist(store, args.studies)
    return 0


def _print_worklist(store: Store, limit: int) -> None:
    from datetime import datetime

    from appliance.store.worklist import studies

    rows = studies(store.conn, limit) if limit > 0 else []
    if rows:
        print(f"worklist (most urgent first, {len(rows)} shown):")
    for row in rows:
        local = datetime.fromisoformat(row.received_at).astimezone().strftime("%Y-%m-%d %H:%M")
        states = ", ".join(f"{n} {state.replace('_', ' ')}" for state, n in row.states.items())
        print(
            f"  {row.triage.upper():8} {local}  {row.modalities:6} {row.patient_id:12} "
            f"{row.triage_reason or '-'}  [{states}]"
        )


def _expand(paths: list[Path]) -> list[Path]:
    """The files named, and the DICOM files (by their preamble) inside the folders named."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and _is_dicom_file(p))
        elif path.is_file():
            files.append(path)
        else:
            raise ApplianceError(f"{path}: no such file or folder")
    return files


def _is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file: 128 bytes of preamble, then "DICM" (README and CSV files are not)."""
    try:
        with path.open("rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False
