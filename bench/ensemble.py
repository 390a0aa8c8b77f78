"""The ensemble's cost: per-series segmentation time and the worker's peak memory for 1, 3 and
5 U-Net members (and with each member's mirror, flip test-time augmentation: 2, 6, 10
passes), on a 15-slice 320x320 series, each configuration in a fresh process as a worker
runs it:

- `tensorflow_batched`: `pipeline.inference.Ensemble` as the worker uses it, every member in
  one traced call per batch of slices;
- `tensorflow_one_by_one`: the same members, one traced call each (what it replaced);
- `onnxruntime`: the batched graph converted with tf2onnx and run by ONNX Runtime, in a
  process that never imports TensorFlow.

Members beyond the shipped U-Net are the same architecture with other random weights: the
time and memory of a network do not depend on what it learnt. Seconds per series include
the preprocessing and the resizing back onto the slices (the worker's `inference_s`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import summary
from worker.settings import Settings

MEMBERS = (1, 3, 5)
SLICES = 15
SIZE = 320

_SERIES = f"""
import time, json, sys
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
started = time.perf_counter()
import numpy as np
from pipeline.synthetic.phantom import PhantomParams, make_phantom
slices = make_phantom(PhantomParams(seed=77, slices={SLICES}, rows={SIZE}, cols={SIZE})).image.astype(np.float32)
"""

_TENSORFLOW = _SERIES + """
from pipeline.inference import Ensemble
ensemble = Ensemble.load(json.loads(sys.argv[1]))
run = ensemble.member_probabilities if sys.argv[2] == "batched" else ensemble.members_one_by_one
"""

_ONNXRUNTIME = _SERIES + """
import onnxruntime as ort
from pipeline.preprocess import from_network, to_network
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
feed = session.get_inputs()[0].name
def run(slices):
    x = to_network(slices, 256)
    out = np.concatenate([session.run(None, {feed: x[i:i + 8]})[0] for i in range(0, len(x), 8)], axis=1)
    return [from_network(member, slices.shape[1:]) for member in out]
"""

_TIMED = """
loaded = time.perf_counter() - started
np.mean(run(slices), axis=0)  # warm-up: tracing, allocation
times = []
for _ in range(int(sys.argv[3])):
    t = time.perf_counter()
    np.mean(run(slices), axis=0)
    times.append(time.perf_counter() - t)
print(json.dumps({"load_s": loaded, "seconds": times, "peak_rss_mib": peak(),
                  "tensorflow_imported": "tensorflow" in sys.modules}))
"""


def _members(folder: Path, count: int) -> list[str]:
    """The shipped U-Net and count - 1 others of random weights, as weights files with their JSON."""
    import tensorflow as tf

    from pipeline.networks import build_unet

    settings = Settings()
    shipped = settings.first_network_weights()
    paths = [str(shipped)]
    for k in range(1, count):
        tf.keras.utils.set_random_seed(k)
        path = folder / f"random_{k}.weights.h5"
        if not path.is_file():
            build_unet(classes=4, input_size=256).save_weights(path)
            shutil.copyfile(shipped.with_name(shipped.name.removesuffix(".weights.h5") + ".json"),
                            folder / f"random_{k}.json")
        paths.append(str(path))
    return paths


def _onnx(members: list[str], path: Path) -> None:
    import tf2onnx

    from pipeline.inference import Ensemble, _members_at_once

    ensemble = Ensemble.load(members)
    forward = _members_at_once(ensemble.members, 256)
    spec = forward.input_signature  # the traced signature itself: tf2onnx must not retrace it
    tf2onnx.convert.from_function(forward, input_signature=spec, opset=17, output_path=str(path))


def _measure(code: str, argument: str, mode: str, repeats: int) -> dict:
    done = subprocess.run([sys.executable, "-c", code + _TIMED, argument, mode, str(repeats)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ensemble benchmark process failed: {done.stderr[-1500:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return {"seconds_per_series": summary(figures["seconds"]), "load_s": figures["load_s"],
            "peak_rss_mib": figures["peak_rss_mib"], "tensorflow_imported": figures["tensorflow_imported"]}


def run(repeats: int = 3) -> dict:
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="lumbarnode-bench-ensemble-") as folder:
        work = Path(folder)
        for count in MEMBERS:
            members = _members(work, count)
            onnx_path = work / f"ensemble_{count}.onnx"
            _onnx(members, onnx_path)
            mirrored = [item for path in members for item in (path, f"{path}:flip")]
            results[f"{count}_members"] = {
                "passes": count,
                "tensorflow_batched": _measure(_TENSORFLOW, json.dumps(members), "batched", repeats),
                "tensorflow_one_by_one": _measure(_TENSORFLOW, json.dumps(members), "one_by_one", repeats),
                "onnxruntime": _measure(_ONNXRUNTIME, str(onnx_path), "", repeats),
            }
            results[f"{count}_members_with_flips"] = {
                "passes": 2 * count,
                "tensorflow_batched": _measure(_TENSORFLOW, json.dumps(mirrored), "batched", repeats),
            }
    for row in results.values():
        batched = row["tensorflow_batched"]["seconds_per_series"]["median"]
        for name, runtime in row.items():
            if isinstance(runtime, dict):
                runtime["ratio_to_tensorflow_batched"] = runtime["seconds_per_series"]["median"] / batched
    return {"slices": SLICES, "size": SIZE, "network_input": 256, "configurations": results}
