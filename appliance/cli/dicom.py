"""`appliance send` and `appliance echo`: talk to a DICOM peer as an SCU.

pynetdicom is imported by these commands only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance.cli.common import Subcommands, settings_from
from appliance.errors import ApplianceError


def register(sub: Subcommands) -> None:
    """Add `send` and `echo` to the CLI's sub-commands."""
    send = sub.add_parser("send", help="C-STORE files to a DICOM peer")
    send.add_argument("files", nargs="+", type=Path, help="files or folders of DICOM files")
    send.add_argument("--to", required=True, metavar="HOST:PORT")
    send.add_argument("--aet", default="APPLIANCE-SCU", help="our (calling) AE title")
    send.add_argument("--aec", default="APPLIANCE", help="the peer's (called) AE title")
    send.set_defaults(func=cmd_send)
    echo = sub.add_parser(
        "echo", help="C-ECHO a DICOM peer, or a configured destination by its name"
    )
    echo.add_argument("peer", metavar="HOST:PORT|NAME")
    echo.add_argument("--aet", default="APPLIANCE-SCU", help="our AE title (HOST:PORT only)")
    echo.add_argument("--aec", default="APPLIANCE", help="its AE title (HOST:PORT only)")
    echo.set_defaults(func=cmd_echo)


def cmd_send(args: argparse.Namespace) -> int:
    from appliance.dicomout.scu import Peer, parse_peer, send

    host, port = parse_peer(args.to)
    files = expand(args.files)
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

    if ":" not in args.peer:
        return echo_destination(args)
    host, port = parse_peer(args.peer)
    status = echo(Peer(host, port, args.aec, args.aet))
    print(f"C-ECHO {args.aec}@{host}:{port}: status 0x{status:04X}")
    return 0 if status == 0 else 1


def echo_destination(args: argparse.Namespace) -> int:
    """C-ECHO a configured destination as the sender would reach it (its host, port and AE
    titles, the sender's connect timeout) and say in plain words whether it answers."""
    from appliance.dicomout.scu import AssociationError, Peer, echo
    from appliance.sender import reasons

    settings = settings_from(args, announce=False)
    destination = settings.destination(args.peer)
    if destination is None:
        known = ", ".join(d.name for d in settings.destinations) or "none"
        raise ApplianceError(
            f"{args.peer!r} is neither HOST:PORT nor a configured destination (configured: {known})"
        )
    calling = settings.calling_ae_title(destination)
    peer = Peer(destination.host, destination.port, destination.called_ae_title, calling)
    print(f"{destination.name}: {peer.where}, calling AE {calling!r}")
    try:
        status = echo(peer, settings.sender.connect_timeout_s)
    except AssociationError as exc:
        print(f"{destination.name}: NOT reachable: {reasons.association_failed(exc, peer)}")
        return 1
    if status == 0:
        print(f"{destination.name}: reachable: it answered the echo [status 0x0000]")
        return 0
    if status < 0:
        print(f"{destination.name}: NOT reachable: it did not answer the echo")
    else:
        print(f"{destination.name}: it answered the echo with a failure [status 0x{status:04X}]")
    return 1


def expand(paths: list[Path]) -> list[Path]:
    """The files named, and the DICOM files (by their preamble) inside the folders named."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and is_dicom_file(p))
        elif path.is_file():
            files.append(path)
        else:
            raise ApplianceError(f"{path}: no such file or folder")
    return files


def is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file: 128 bytes of preamble, then "DICM" (README and CSV files are not).

    A file that cannot be read is not one to send; `send` reports the files it does send.
    """
    try:
        with path.open("rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False
