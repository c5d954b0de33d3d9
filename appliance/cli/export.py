"""`appliance export STUDY DEST`: a study as a DICOM File-set (DICOMDIR and files) in a new
folder under DEST, for a USB stick where no network reaches the clinic's record.

STUDY is the Study Instance UID, the accession number or the study's id on the box (as the
study page's address shows it). The export holds the received originals and the newest objects
the box made of them, and is audited like one made on the study page.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance.cli.common import Subcommands, settings_from
from appliance.errors import ApplianceError


def register(sub: Subcommands) -> None:
    """Add `export` to the CLI's sub-commands."""
    export = sub.add_parser("export", help="write a study as a DICOM File-set (USB stick)")
    export.add_argument("study", metavar="STUDY", help="Study Instance UID, accession number or id")
    export.add_argument("dest", metavar="DEST", type=Path, help="a folder, e.g. a mounted stick")
    export.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from appliance.dicomout.fileset import export_study, fileset_id_for
    from appliance.store import audit, open_store
    from appliance.store import export as exported
    from appliance.store.refused import Refused

    store = open_store(settings_from(args))
    try:
        try:
            study_id = exported.find_study(store.conn, args.study)
        except Refused as exc:
            raise ApplianceError(str(exc)) from exc
        files = exported.study_files(store.conn, store.spool, store.outputs, study_id)
        label = exported.study_label(store.conn, study_id)
        result = export_study(files, args.dest, fileset_id_for(label))
        audit.append(
            store.conn,
            "cli",
            "export",
            f"study:{study_id}",
            folder=str(result.folder),
            files=result.files,
            size_bytes=result.size_bytes,
        )
    finally:
        store.close()
    print(f"wrote {result.files} file(s), {result.size_bytes // 1024} KiB, to {result.folder}")
    print(f"DICOMDIR: {result.dicomdir}")
    return 0
