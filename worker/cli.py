"""`lumbarnode`: the one command-line entry point, with subcommands."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from dicom_io.results import software_version


class UsageError(Exception):
    """An operator's mistake: printed as one line, exit code 2, no traceback."""


def _pair(text: str, cast=float) -> tuple:
    """'0.6x0.9' -> (0.6, 0.9); '320' -> (320, 320)."""
    parts = text.lower().split("x")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected N or RxC, got {text!r}")
    try:
        return cast(parts[0]), cast(parts[1])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def cmd_phantom(args: argparse.Namespace) -> int:
    from pipeline.synthetic.phantom import PhantomParams
    from worker.phantom_study import write_phantom_study

    rows, cols = args.size
    params = PhantomParams(lla_deg=args.lla, seed=args.seed, slices=args.slices, rows=rows, cols=cols,
                           row_spacing_mm=args.spacing[0], col_spacing_mm=args.spacing[1], contrast=args.contrast)
    try:
        study = write_phantom_study(params, args.out)
    except ValueError as exc:
        print(f"phantom: {exc}", file=sys.stderr)
        return 2
    truth = study.truth
    print(f"wrote {truth['instances']} MR instances to {study.dicom_dir}")
    print(f"LLA {truth['lla_deg']:.2f} deg ({truth['class']}), levels {' '.join(truth['levels'])}")
    print(f"ground truth: {study.truth_path}, labels: {study.labels_path}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from dicom_io.errors import SeriesRefused
    from dicom_io.series import describe, load_series

    try:
        series = load_series(args.path, require_volume=not args.allow_single)
    except SeriesRefused as exc:
        if args.json:
            print(json.dumps({"refused": exc.reason, "message": str(exc)}))
        else:
            print(f"refused ({exc.reason}): {exc}")
        return 2
    info = describe(series)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    shape, spacing = info["shape"], info["pixel_spacing_mm"]
    lines = [
        f"series       {info['series_instance_uid']}  ({info['series_description'] or 'no description'})",
        f"study        {info['study_instance_uid']}",
        f"frame of ref {info['frame_of_reference_uid']}",
        f"orientation  {info['orientation']} (normal {info['obliquity_deg']} deg from left-right), "
        f"stored {info['source_orientation']}",
        f"size         {shape['slices']} slices x {shape['rows']} rows x {shape['cols']} cols ({info['layout']})",
        f"spacing      {spacing[0]} x {spacing[1]} mm in-plane (row x col), slices every "
        f"{info['slice_spacing_mm']} mm, thickness {info['slice_thickness_mm']} mm",
        f"positions    {info['slice_positions_mm'][0]} .. {info['slice_positions_mm'][-1]} mm (toward patient left)",
        f"values       {info['value_range'][0]:g} .. {info['value_range'][1]:g}",
        f"encoding     {', '.join(info['transfer_syntaxes'])}",
        f"instances    {len(info['sop_instance_uids'])}: {info['sop_instance_uids'][0]} ...",
    ]
    lines += [f"warning      {w}" for w in info["warnings"]]
    print("\n".join(lines))
    return 0


def cmd_wrap(args: argparse.Namespace) -> int:
    from dicom_io.volumes import load_real, wrap_as_dicom

    try:
        volume = load_real(args.source, spacing_mm=args.spacing)
    except (ValueError, OSError) as exc:
        print(f"wrap: {exc}", file=sys.stderr)
        return 2
    paths = wrap_as_dicom(volume, Path(args.out) / "dicom")
    if volume.labels is not None:
        import numpy as np

        np.savez_compressed(Path(args.out) / "labels.npz", labels=volume.labels)
    known = "" if volume.spacing_known else " (assumed: the source lost its spacing)"
    print(f"wrote {len(paths)} MR instances of {volume.source} to {Path(args.out) / 'dicom'}; "
          f"spacing {' x '.join(f'{v:.4g}' for v in volume.spacing_mm)} mm (slice x row x col){known}")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from worker import analyze, method, rendering
    from worker.settings import Settings

    settings = Settings.from_env()
    missing = settings.missing_segmentation_weights()
    if missing:
        print(f"analyze: no segmentation weights at {missing[0]}: run `make train`", file=sys.stderr)
        return rendering.EXIT_REFUSED
    analysed = analyze.run(Path(args.path), method.Models.load(settings), settings,
                          tuple(args.pixel_spacing) if args.pixel_spacing else None)
    result = rendering.as_json(analysed)
    if analysed.outcome is not method.Outcome.REFUSED:
        import cv2

        if args.mask_out:
            cv2.imwrite(args.mask_out, method.mask_on_source(analysed))
        if args.overlay_out:
            cv2.imwrite(args.overlay_out, method.overlay_bgr(analysed))
    if args.json:
        print(json.dumps(result, indent=2))
    elif analysed.outcome is method.Outcome.REFUSED:
        print(f"refused: {result['refused']}")
    else:
        print(f"LLA {_lla_text(result)}; CNN {result['cnn_class']}; slice {result['slice_index']}; "
              f"levels {_levels(result)}")
        if result["flags"]:
            print("flags: " + ", ".join(result["flags"]))
    return rendering.exit_code(analysed)


def _lla_text(result: dict) -> str:
    if result["lla_deg"] is None:
        return "not measured"
    spread = result.get("lla_spread_deg")
    across = "" if spread is None else f", spread {spread:.1f} deg across {len(result['lla_members_deg'])} segmentation passes"
    return f"{result['lla_deg']:.1f} deg ({result['class']}{across})"


def _levels(result: dict) -> str:
    return " ".join(result["vertebrae"]) or "none identified"


def cmd_process(args: argparse.Namespace) -> int:
    import dataclasses

    from worker import method, process, rendering
    from worker.settings import Settings

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    settings = Settings.from_env()
    if args.no_key_image:
        settings = dataclasses.replace(settings, key_image=False)
    missing = settings.missing_segmentation_weights()
    if missing:
        print(f"process: no segmentation weights at {missing[0]}: run `make train`", file=sys.stderr)
        return rendering.EXIT_REFUSED
    processed = process.process_series(Path(args.series), method.Models.load(settings), settings)
    written = rendering.write_results(processed, out)
    result = rendering.as_json(processed)
    if processed.outcome is method.Outcome.REFUSED:
        print(f"refused: {result['refused']} (no DICOM written; {written[-1]})", file=sys.stderr)
        return rendering.exit_code(processed)
    print(f"LLA {_lla_text(result)}; CNN {result['cnn_class']}; levels {_levels(result)}")
    if result["flags"]:
        print("flags: " + ", ".join(result["flags"]))
    for path in written:
        print(f"wrote {path}")
    return rendering.exit_code(processed)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of 1 or more")
    return value


def _settings():
    from worker.settings import Settings

    return Settings.from_env()


def configure_logging(verbose: bool = False) -> None:
    import logging

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # per-association chatter
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # a line per copied module
    logging.getLogger("alembic").setLevel(logging.WARNING)  # two lines at every start


def cmd_serve(args: argparse.Namespace) -> int:
    from worker.node import run_node

    settings = _settings()
    configure_logging()
    return run_node(settings, with_workers=True)


def cmd_listen(args: argparse.Namespace) -> int:
    from worker.node import run_node

    settings = _settings()
    configure_logging()
    return run_node(settings, with_workers=False)


def cmd_worker(args: argparse.Namespace) -> int:
    from worker import tasks
    from worker.node import run_worker

    known = (tasks.INFERENCE_QUEUE, tasks.EXPORT_QUEUE)
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = [q for q in queues if q not in known]
    if unknown or not queues:
        raise UsageError(f"--queues {args.queues!r}: unknown queue {', '.join(map(repr, unknown)) or '(none)'}; "
                         f"use {', '.join(known)} or both, comma-separated")
    if args.concurrency < 1:
        raise UsageError(f"--concurrency {args.concurrency}: expected 1 or more")
    settings = _settings()
    configure_logging()
    return run_worker(settings, ",".join(queues), args.concurrency)


def cmd_admin(args: argparse.Namespace) -> int:
    from worker.admin import run_admin

    settings = _settings()
    _open_store(settings).dispose()  # a missing or foreign database is one line now, not a 500 per page
    configure_logging()
    return run_admin(settings, host=args.host, port=args.port)


def cmd_config(args: argparse.Namespace) -> int:
    from db.urls import redact

    settings = _settings()
    values = settings.as_dict()
    for key in ("database_url", "broker_url"):
        values[key] = redact(values[key])
    if args.json:
        print(json.dumps(values, indent=2))
    else:
        width = max(map(len, values))
        for key, value in values.items():
            print(f"{key.upper():<{width}}  {value}")
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from db.migrate import current_revision, upgrade
    from db.urls import redact

    settings = _settings()
    if args.action == "upgrade":
        upgrade(settings.database_url)
    print(f"{redact(settings.database_url)}: revision {current_revision(settings.database_url)}")
    return 0


def _job_line(job) -> str:
    lla = "" if job.lla_deg is None else f"{job.lla_deg:6.1f} {job.lla_class or ''}"
    why = job.reason or ""
    return (f"{job.id:>6}  {job.created_at:%Y-%m-%d %H:%M:%S}  {job.status:<13} v{job.version:<3} "
            f"{job.instance_count:>4}  {lla:<20} {why:<24} {job.series_instance_uid}")


def _open_store(settings):
    """The node's job database for an operator command: never created here (a wrong folder or
    URL is said in one line instead of leaving an empty database behind); an older revision is
    migrated."""
    from db import JobStore
    from db.migrate import ready

    ready(settings.database_url)
    return JobStore(settings.database_url)


def cmd_jobs(args: argparse.Namespace) -> int:
    from db import STATUSES

    if args.action == "list" and args.status and args.status not in STATUSES:
        raise UsageError(f"--status {args.status!r}: one of {', '.join(STATUSES)}")
    settings = _settings()
    store = _open_store(settings)
    if args.action == "list":
        found = store.list_jobs(status=args.status, since=args.since, limit=args.limit)
        if args.json:
            print(json.dumps([j.as_dict() for j in found], indent=2))
            return 0
        print(f"{'ID':>6}  {'CREATED (UTC)':<19}  {'STATUS':<13} {'VER':<4} {'INST':>4}  {'LLA':<20} "
              f"{'REASON':<24} SERIES")
        for job in found:
            print(_job_line(job))
        return 0
    job = store.get_job(args.id)
    if job is None:
        print(f"jobs: no job {args.id}", file=sys.stderr)
        return 2
    if args.action == "show":
        info = job.as_dict()
        info["exports"] = [e.as_dict() for e in store.exports(job.id)]
        info["events"] = [e.as_dict() for e in store.events(job.id)]
        if args.json:
            print(json.dumps(info, indent=2))
            return 0
        for key, value in info.items():
            if key in ("exports", "events", "instance_uids", "timings", "flags"):
                continue
            print(f"{key:<22} {value}")
        from dicom_io.codes import flag_meaning

        for flag in job.flags:
            print(f"flag                   {flag}: {flag_meaning(flag)}")
        print("timings (s)            " + ", ".join(f"{k} {v:.3f}" for k, v in job.timings.items()))
        for export in info["exports"]:
            print(f"export #{export['attempt']:<3} {export['started_at']}  {export['status']:<7} "
                  f"{export['dimse_status'] or ''} {export['error'] or ''}")
        for event in info["events"]:
            print(f"event  {event['at']}  {event['kind']:<22} {event['message']}")
        return 0
    # retry
    from worker import tasks
    from worker.bookkeeper import Bookkeeper, NothingToRetry

    tasks.configure(settings)
    try:
        done = Bookkeeper(store, settings, tasks.enqueue_process, tasks.enqueue_export).retry(job, args.export_only)
    except NothingToRetry as exc:
        print(f"jobs: {exc}", file=sys.stderr)
        return 2
    import getpass

    from db.access import AccessStore

    AccessStore(store).audit("resend" if args.export_only else "retry", actor=f"cli:{getpass.getuser()}",
                             actor_kind="cli", job_id=job.id, detail=done)
    print(f"job {job.id}: {done}")
    return 0


def _since(text: str):
    """'2026-11-25', '2026-11-25T10:00', or a duration back from now: '30m', '2h', '7d'."""
    import re
    from datetime import UTC, datetime, timedelta

    match = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if match:
        seconds = int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return datetime.now(UTC) - timedelta(seconds=seconds)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a date (2026-11-25), a UTC time (2026-11-25T10:00) or a duration (30m, 2h, 7d)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def cmd_demo(args: argparse.Namespace) -> int:
    from worker import demo

    out = Path(args.out or tempfile.mkdtemp(prefix="lumbarnode-demo-"))
    print("lumbarnode demo: a stand-in PACS sends a study to the node (serve, embedded defaults),")
    print("which measures it and sends the SEG, SR and key image back.\n")
    code = demo.run(out, phantom=args.phantom)
    print(f"\ndemo output in {out}")
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lumbarnode", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lumbarnode {software_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("phantom", help="write a synthetic sagittal lumbar MR study with exact ground truth")
    p.add_argument("--out", required=True, help="folder to write dicom/, labels.npz and truth.json into")
    p.add_argument("--lla", type=float, default=None, help="lumbar lordosis angle in degrees (default: from seed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slices", type=int, default=15)
    p.add_argument("--size", type=lambda t: _pair(t, int), default=(320, 320), help="N or ROWSxCOLS (default 320)")
    p.add_argument("--spacing", type=_pair, default=(0.9, 0.9),
                   help="pixel spacing ROWxCOL in mm, as DICOM PixelSpacing (default 0.9x0.9)")
    p.add_argument("--contrast", choices=("t2", "t1"), default="t2")
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("inspect", help="print what the series loader understands of a series, or why it refuses it")
    p.add_argument("path", help="a series folder or a DICOM file")
    p.add_argument("--json", action="store_true")
    p.add_argument("--allow-single", action="store_true", help="accept a single 2-D slice")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("wrap", help="wrap real pixels (.npz volume, NIfTI, PNG slices) as a DICOM MR series")
    p.add_argument("source", nargs="+", help="one .npz or .nii[.gz] volume, or PNG slices in order")
    p.add_argument("--out", required=True)
    p.add_argument("--spacing", type=float, nargs=3, metavar=("SLICE", "ROW", "COL"), default=None,
                   help="spacing in mm where the source has none (default: the source's, or 1 mm)")
    p.set_defaults(func=cmd_wrap)

    p = sub.add_parser("analyze", help="measure the LLA on a DICOM series, a DICOM file or a PNG slice")
    p.add_argument("path", help="a DICOM series folder, a DICOM file, or a 2-D greyscale PNG (superior up)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--mask-out", metavar="FILE.png", help="label map of the measured slice (per-level values)")
    p.add_argument("--overlay-out", metavar="FILE.png", help="picture of the measurement")
    p.add_argument("--pixel-spacing", type=float, nargs=2, metavar=("ROW_MM", "COL_MM"),
                   help="pixel spacing (required for a correct angle on PNG input; default 1 mm)")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("process", help="run the method on a series and write DICOM SEG, SR and key image")
    p.add_argument("series", help="a sagittal lumbar MR series folder (or its files' folder)")
    p.add_argument("--out", required=True, help="folder for seg.dcm, sr.dcm, key.dcm and result.json")
    p.add_argument("--no-key-image", action="store_true",
                   help="no Secondary Capture key image (also LUMBARNODE_KEY_IMAGE=false)")
    p.set_defaults(func=cmd_process)

    sub.add_parser("train", help="train the U-Net or Deteclordose (lumbarnode train -h)", add_help=False)
    sub.add_parser("evaluate", help="evaluate trained networks (lumbarnode evaluate -h)", add_help=False)
    sub.add_parser("package", help="ship two training runs as models/ with a model card", add_help=False)

    p = sub.add_parser("serve", help="the DICOM node: listener and embedded workers (the zero-server default)")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("listen", help="the DICOM listener alone (workers run with `lumbarnode worker`)")
    p.set_defaults(func=cmd_listen)
    p = sub.add_parser("worker", help="a Celery worker for the inference and/or export queue")
    p.add_argument("--queues", default="inference,export", help="comma-separated: inference, export")
    p.add_argument("--concurrency", type=int, default=1)
    p.set_defaults(func=cmd_worker)
    p = sub.add_parser("config", help="print the effective settings (passwords hidden)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_config)
    p = sub.add_parser("db", help="the job database: `db upgrade` runs the migrations, `db status` shows the revision")
    p.add_argument("action", choices=("upgrade", "status"))
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("jobs", help="what came in, what ran, what was sent: jobs list | show ID | retry ID")
    jobs = p.add_subparsers(dest="action", required=True)
    q = jobs.add_parser("list", help="newest first")
    q.add_argument("--status", help="received, queued, running, exporting, done, skipped, failed, export_failed")
    q.add_argument("--since", type=_since, help="ISO date/time (UTC) or a duration back from now: 30m, 2h, 7d")
    q.add_argument("--limit", type=_positive, default=50)
    q.add_argument("--json", action="store_true")
    q = jobs.add_parser("show", help="everything about one job: stages and timings, results, exports, events")
    q.add_argument("id", type=int)
    q.add_argument("--json", action="store_true")
    q = jobs.add_parser("retry", help="send a job's results again (export_failed) or run it again (failed, done)")
    q.add_argument("id", type=int)
    q.add_argument("--export-only", action="store_true", help="only send the results of a done job again")
    p.set_defaults(func=cmd_jobs)

    from worker import users_command

    p_users, p_audit = users_command.add_parsers(sub, _since, _positive)
    p_users.set_defaults(func=lambda a: users_command.cmd_users(a, _open_store, _settings()))
    p_audit.set_defaults(func=lambda a: users_command.cmd_audit(a, _open_store, _settings()))

    p = sub.add_parser("admin", help="web page of the jobs (sign-in, roles, retry, audit), JSON API, Prometheus /metrics")
    p.add_argument("--host", default=None, help="address to bind (default ADMIN_HOST: 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=None, help="TCP port (default ADMIN_PORT: 8080)")
    p.set_defaults(func=cmd_admin)

    p = sub.add_parser("demo", help="run the main job end to end on the embedded defaults")
    p.add_argument("--out", default=None, help="output folder (default: a new temporary folder)")
    p.add_argument("--phantom", action="store_true", help="send a synthetic study instead of the real volume")
    p.set_defaults(func=cmd_demo)
    return parser


def _hand_over_to_training(argv: list[str]) -> int:
    """`lumbarnode train|evaluate|package`: training/ owns these and their options. It runs as
    its own process (`python -m training`), so the node's runtime never imports training code
    and an image without training/ still runs everything else."""
    import importlib.util
    import subprocess

    if importlib.util.find_spec("training") is None:
        print(f"lumbarnode {argv[0]}: training/ is not installed here (run it from a checkout: make train)",
              file=sys.stderr)
        return 2
    return subprocess.run([sys.executable, "-m", "training", *argv]).returncode


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("train", "evaluate", "package"):
        return _hand_over_to_training(argv)
    args = build_parser().parse_args(argv)
    from db.migrate import DatabaseNotReady
    from worker import users_command
    from worker.settings import SettingsError

    try:
        return args.func(args)
    except (UsageError, users_command.UsageError, SettingsError, DatabaseNotReady) as exc:
        print(f"lumbarnode {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
