"""`appliance capture probe`: which video devices this box has, and which modes they open in.

The probing itself is `appliance.capture.probe` (OpenCV imported only when a mode is opened);
this module parses the arguments and prints the results.
"""

from __future__ import annotations

import argparse

from appliance.capture.probe import device_name, device_path, probe_device, video_devices
from appliance.cli.common import Subcommands


def register(sub: Subcommands) -> None:
    """Add the `capture` command (and its `probe`) to the CLI's sub-commands."""
    parser = sub.add_parser("capture", help="live ultrasound capture: find devices")
    commands = parser.add_subparsers(dest="capture_command", metavar="COMMAND", required=True)
    probe = commands.add_parser(
        "probe",
        help="list /dev/video* devices and the modes OpenCV can open them in",
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
    )
    probe.add_argument("--seconds", type=float, default=1.0, help="frames timed per mode")
    probe.add_argument("--device", action="append", help="probe only this device (repeatable)")
    probe.set_defaults(func=cmd_probe)


def cmd_probe(args: argparse.Namespace) -> int:
    """Print each device with its name and every common mode's result; 1 when there is none."""
    devices = [device_path(d) for d in args.device] if args.device else video_devices()
    if not devices:
        print("no video devices (/dev/video*): is the grabber plugged in?")
        return 1
    for device in devices:
        print(f"{device}: {device_name(device)}")
        for result in probe_device(device, args.seconds):
            print(result.describe(), flush=True)
    return 0
