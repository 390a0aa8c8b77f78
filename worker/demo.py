"""`lumbarnode demo`: the node end to end on the embedded defaults, with a stand-in PACS.

1. A storage SCP plays the PACS that receives the results (AE DEMO_PACS, a folder).
2. `lumbarnode serve` starts on the embedded defaults (SQLite job database, SQLite broker,
   embedded workers) with three settings only: a free port, a fresh data folder, and
   DEMO_PACS as the allowed caller whose results go back to it.
3. Once the inference worker has loaded the networks (its `worker_ready` event), the PACS
   sends a study: the real fastMONAI T2 volume that ships in demo/ wrapped as DICOM (or,
   with --phantom, a synthetic study), over a real association.
4. The demo waits for the job in the database, prints the result with what each flag
   means, the stage timings, the received files and how to look at them, and stops the node
   with SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from worker.settings import REPOSITORY, Settings, variable

DEMO_VOLUME = REPOSITORY / "demo" / "fastmonai-t2-volume" / "img.nii.gz"
PACS_AE = "DEMO_PACS"
FINAL = ("done", "skipped", "failed", "export_failed")
BORDERLINE_DEG = 2.5  # about the real-data median error (models/MODEL_CARD.md)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_study(out: Path, phantom: bool) -> Path:
    if phantom:
        from pipeline.synthetic.phantom import PhantomParams
        from worker.phantom_study import write_phantom_study

        study = write_phantom_study(PhantomParams(lla_deg=47.0, seed=1001, rows=448, cols=320,
                                                  row_spacing_mm=0.6, col_spacing_mm=0.9), out)
        print(f"study: synthetic phantom, LLA {study.truth['lla_deg']:.1f} deg by construction")
        return study.dicom_dir
    from dicom_io.volumes import load_real, wrap_as_dicom

    volume = load_real(DEMO_VOLUME)
    wrap_as_dicom(volume, out / "dicom")
    print(f"study: real T2 volume {DEMO_VOLUME.relative_to(REPOSITORY)} (fastMONAI, Apache-2.0), wrapped as DICOM")
    return out / "dicom"


def wait_for_port(port: int, process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the node exited with code {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"the node did not listen on port {port} within {timeout_s:.0f} s")


def run(out: Path, phantom: bool = False, timeout_s: float = 600.0) -> int:
    from db import JobStore
    from dicom_io.scp import StorageSCP
    from dicom_io.scu import send_files
    from dicom_io.series import decodable_transfer_syntaxes

    out.mkdir(parents=True, exist_ok=True)
    node_port, pacs_port = free_port(), free_port()
    chosen = {"data_dir": str((out / "node").resolve()), "port": str(node_port),
              "allowed_callers": f"{PACS_AE}={PACS_AE}@127.0.0.1:{pacs_port}"}
    settings = Settings.from_env({variable(k): v for k, v in chosen.items()})
    received: list[Path] = []
    pacs = StorageSCP(PACS_AE, out / "pacs", allowed_callers={settings.ae_title},
                      transfer_syntaxes=[str(ts) for ts in decodable_transfer_syntaxes()],
                      on_stored=lambda instance: received.append(instance.path))
    pacs.start("127.0.0.1", pacs_port)
    dicom_dir = make_study(out / "study", phantom)
    # The node's environment: this machine's, less any LUMBARNODE_* of the caller's, plus the three above.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUMBARNODE_")}
    env.update({variable(k): v for k, v in chosen.items()})
    log_path = out / "node.log"
    with open(log_path, "w") as log:
        node = subprocess.Popen([sys.executable, "-m", "worker.cli", "serve"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        wait_for_port(node_port, node)
        print(f"node: `lumbarnode serve` as {settings.ae_title} on port {node_port}, embedded defaults with "
              + ", ".join(f"{variable(k)}={v}" for k, v in chosen.items()) + f" (log {log_path})")
        store = JobStore(settings.database_url)
        ready_s = wait_for_worker(store, node)
        print(f"node: inference worker ready {ready_s:.1f} s after the port opened (networks loaded)")
        files = sorted(dicom_dir.glob("*.dcm"))
        sent_at = time.monotonic()
        result = send_files(files, settings.ae_title, "127.0.0.1", node_port, calling_ae=PACS_AE)
        print(f"PACS -> node: {len(files)} instances sent, statuses {'all success' if result.ok else result.statuses}")
        series_uid = _series_uid(files[0])
        job = None
        while time.monotonic() - sent_at < timeout_s:
            job = store.latest_job(series_uid)
            if job is not None and job.status in FINAL:
                break
            time.sleep(0.25)
        elapsed = time.monotonic() - sent_at
        if job is None or job.status not in FINAL:
            print(f"no result within {timeout_s:.0f} s (job: {job.status if job else 'none'}); see {log_path}")
            return 1
        report(job, store, received, elapsed)
        how_to_look(job, settings, out)
        return 0 if job.status == "done" else 1
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(timeout=120)
        except subprocess.TimeoutExpired:
            node.kill()
        print(f"node stopped (exit code {node.returncode})")
        pacs.stop()


def wait_for_worker(store, node: subprocess.Popen, timeout_s: float = 300.0) -> float:
    """Until the inference worker says it is ready, so that the study does not wait for TensorFlow."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if any("inference" in e.message for e in store.events(kind="worker_ready")):
            return time.monotonic() - started
        if node.poll() is not None:
            raise RuntimeError(f"the node exited with code {node.returncode}")
        time.sleep(0.2)
    raise TimeoutError(f"the inference worker was not ready within {timeout_s:.0f} s")


def _series_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def report(job, store, received: list[Path], elapsed: float) -> None:
    from dicom_io.codes import flag_meaning

    lla = "not measured" if job.lla_deg is None else f"{job.lla_deg:.1f} deg"
    print(f"\njob {job.id}: {job.status}  LLA {lla}  class {job.lla_class}  CNN {job.cnn_class}")
    if job.lla_deg is not None:
        for threshold, between in ((Settings.lla_low_deg, "hypolordosis and normal"),  # the demo's: the defaults
                                   (Settings.lla_high_deg, "normal and hyperlordosis")):
            if abs(job.lla_deg - threshold) < BORDERLINE_DEG:
                print(f"borderline: {abs(job.lla_deg - threshold):.1f} deg from the {threshold:g} deg threshold "
                      f"between {between}; the class could go either way within the method's error")
    print("flags: " + ("none" if not job.flags else "(the same sentences as in the SR and on the admin page)"))
    for flag in job.flags:
        print(f"  {flag}: {flag_meaning(flag)}")
    if job.error:
        print(f"error: {job.error}")
    print("stages (s): " + ", ".join(f"{k.removesuffix('_s')} {v:.2f}" for k, v in job.timings.items()))
    print(f"from the last C-STORE response to the results stored at the PACS: {elapsed:.1f} s")
    print(f"model: {job.model_name} {job.model_version} sha256 {job.model_sha256}")
    import pydicom

    for path in sorted(received):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        print(f"received at the PACS: {ds.Modality:<3} {ds.SeriesDescription}: {path}")
    if job.results_dir:
        print(f"overlay: {Path(job.results_dir) / 'overlay.png'}")
    for export in store.exports(job.id):
        print(f"export attempt {export.attempt}: {export.status} to {export.destination} ({export.dimse_status})")


def how_to_look(job, settings: Settings, out: Path) -> None:
    env = f"{variable('data_dir')}={settings.data_dir}"
    print("\nto look at the results:")
    print(f"  files:       {job.results_dir}/ (seg.dcm, sr.dcm, key.dcm, overlay.png, result.json); "
          f"as the PACS received them: {out / 'pacs'}")
    print(f"  the job:     {env} .venv/bin/lumbarnode jobs show {job.id}")
    print(f"  admin page:  {env} .venv/bin/lumbarnode users add me --role admin (once), then")
    print(f"               {env} .venv/bin/lumbarnode admin, and sign in at "
          f"http://127.0.0.1:{settings.admin_port}/jobs/{job.id}")
    print("  a viewer:    open the SEG and SR with the study in OHIF, 3D Slicer or your PACS viewer "
          "(README: Viewing the results)")
