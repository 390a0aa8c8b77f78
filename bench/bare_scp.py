"""pynetdicom's own ceiling for the ingest benchmark: an SCP on the same AE settings as the
node's whose C-STORE handler does nothing but answer success (no parsing, no file, no
fsync). `python -m bench.bare_scp PORT`; stops on SIGTERM."""

from __future__ import annotations

import signal
import sys
import threading

from pynetdicom import AE, AllStoragePresentationContexts, evt

from dicom_io.series import decodable_transfer_syntaxes


def main(port: int) -> None:
    ae = AE(ae_title="BARE")
    syntaxes = [str(ts) for ts in decodable_transfer_syntaxes()]
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, syntaxes)
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)])
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    stopped.wait()
    server.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]))
