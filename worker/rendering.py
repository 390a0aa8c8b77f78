"""A `SeriesResult` rendered for the outside: the JSON contract of `analyze` and `process`,
their exit codes, and the results folder the worker exports from.

Nothing here decides anything: the method (worker/method.py) did.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import cv2

from worker.method import Outcome, SeriesResult

EXIT_MEASURED, EXIT_REFUSED, EXIT_NOT_MEASURED = 0, 2, 3


def exit_code(result: SeriesResult) -> int:
    return {Outcome.MEASURED: EXIT_MEASURED, Outcome.NOT_MEASURED: EXIT_NOT_MEASURED,
            Outcome.REFUSED: EXIT_REFUSED}[result.outcome]


def as_json(result: SeriesResult) -> dict:
    """The analyze contract (README: "The JSON"); `process` adds the objects it wrote."""
    model = None if result.models is None else result.models.as_dict()
    analysis, slices = result.analysis, result.slices
    if result.outcome is Outcome.REFUSED:
        return {"lla_deg": None, "class": None, "cnn_class": None, "cnn_probabilities": None,
                "flags": list(result.flags), "slice_index": None, "vertebrae": {},
                "refused": result.refusal.message, "model": model}
    shape = slices.pixels.shape[1:]

    def point(p) -> list[float]:
        return [round(v, 2) for v in slices.in_plane.point_to_source(p[0], p[1], shape)]

    vertebrae = {
        level: {"centroid": point(v.centroid_px),
                "superior_endplate": None if v.superior_endplate_px is None
                else [point(q) for q in v.superior_endplate_px]}
        for level, v in analysis.vertebrae.items()
    }
    out = {
        "lla_deg": None if analysis.lla_deg is None else round(analysis.lla_deg, 2),
        "class": analysis.lla_class,
        "cnn_class": analysis.cnn_class,
        "cnn_probabilities": {k: round(v, 4) for k, v in analysis.cnn_probabilities.items()} or None,
        "flags": list(result.flags),
        "slice_index": analysis.slice_index,
        "vertebrae": vertebrae,
        "model": model,
    }
    if slices.sop_instance_uids:
        out["sop_instance_uid"] = slices.sop_instance_uids[analysis.slice_index]
    if analysis.confidence is not None:
        out["segmentation_confidence"] = round(analysis.confidence, 4)
    if analysis.member_lla_deg:
        # the uncertainty of the angle: what each ensemble member alone measured, and their range
        out["lla_members_deg"] = [None if a is None else round(a, 2) for a in analysis.member_lla_deg]
        out["lla_spread_deg"] = None if analysis.lla_spread_deg is None else round(analysis.lla_spread_deg, 2)
    if result.datasets:
        out["outputs"] = {kind: {"series_instance_uid": ds.SeriesInstanceUID, "sop_instance_uid": ds.SOPInstanceUID,
                                 "series_description": ds.SeriesDescription}
                          for kind, ds in result.datasets.items()}
    return out


def write_results(result: SeriesResult, out_dir: Path) -> list[Path]:
    """DIR/seg.dcm, sr.dcm, key.dcm (those made), overlay.png and result.json, each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, ds in result.datasets.items():
        written.append(_atomic(out_dir / f"{kind}.dcm", lambda p, ds=ds: ds.save_as(p, enforce_file_format=True)))
    if result.overlay_rgb is not None:
        png = cv2.imencode(".png", cv2.cvtColor(result.overlay_rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
        written.append(_atomic(out_dir / "overlay.png", lambda p: Path(p).write_bytes(png)))
    text = json.dumps(as_json(result), indent=2) + "\n"
    written.append(_atomic(out_dir / "result.json", lambda p: Path(p).write_text(text)))
    return written


def _atomic(path: Path, write) -> Path:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(temporary)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
