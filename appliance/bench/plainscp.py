"""A stock pynetdicom Storage SCP: the baseline for pynetdicom's own cost per message.

    python -m appliance.bench.plainscp PORT OUTDIR [MAX_PDU]

It accepts the same storage contexts as our receiver (every storage SOP class with the same
transfer syntaxes, plus Verification) and writes each dataset to OUTDIR as received, with one
plain write: no fsync, no check, no index. Everything else is pynetdicom's default: it keeps each
dataset in memory and decodes nothing. It prints a line with "listening" once it listens on
127.0.0.1:PORT, and runs until SIGTERM kills it (like storescp: every answered dataset is already
written, and a clean pynetdicom shutdown takes half a second).
"""

from __future__ import annotations

import sys
import threading
import uuid
from pathlib import Path

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from appliance.bench.harness.dicom import AE_TITLE
from appliance.bench.peers import OUR_MAX_PDU
from appliance.receiver.scp import TRANSFER_SYNTAXES


def make_ae(max_pdu: int = OUR_MAX_PDU) -> AE:
    """An AE with our receiver's accepted contexts and PDU size; pynetdicom's defaults otherwise."""
    ae = AE(ae_title=AE_TITLE)
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    ae.maximum_pdu_size = max_pdu
    return ae


def handle_store(event: evt.Event, folder: Path) -> int:
    """Write the dataset as received (with its file meta) under a new name; answer success."""
    (folder / f"{uuid.uuid4().hex}.dcm").write_bytes(event.encoded_dataset())
    return 0x0000


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    port, folder = int(argv[0]), Path(argv[1])
    max_pdu = int(argv[2]) if len(argv) == 3 else OUR_MAX_PDU
    folder.mkdir(parents=True, exist_ok=True)
    ae = make_ae(max_pdu)
    handler = (evt.EVT_C_STORE, handle_store, [folder])
    ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[handler])
    print(f"plainscp: listening as AE {AE_TITLE!r} on 127.0.0.1:{port}", flush=True)
    threading.Event().wait()  # the server's threads do the work
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
