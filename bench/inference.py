"""Inference: the shipped U-Net and Deteclordose under TensorFlow (eager `model(x)`, the
traced `tf.function` the worker uses, and the same with XLA) and under ONNX Runtime (the
networks converted with tf2onnx), on the same inputs; outputs compared; ms per slice and
per 15-slice series; process start-up (import + load) and memory of each runtime."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import summary
from worker.settings import Settings

SLICES = 15


def _timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up (tracing, allocation)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def _inputs() -> tuple[np.ndarray, np.ndarray]:
    from pipeline.preprocess import classifier_input, to_network
    from pipeline.synthetic.phantom import PhantomParams, make_phantom

    phantom = make_phantom(PhantomParams(seed=77, slices=SLICES))
    return to_network(phantom.image, 256), classifier_input(phantom.image[phantom.mid_slice], 224)


def run(repeats: int = 5) -> dict:
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx

    from pipeline.networks import build_deteclordose, build_unet

    settings = Settings()
    x_seg, x_cls = _inputs()
    unet = build_unet(classes=4, input_size=256)
    unet.load_weights(settings.first_network_weights())
    cls = build_deteclordose(input_size=224)
    cls.load_weights(settings.weights(settings.classifier_model))
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, model, x, size in (("unet", unet, x_seg, 256), ("deteclordose", cls, x_cls, 224)):
            spec = (tf.TensorSpec([None, size, size, 1], tf.float32, name="x"),)
            traced = tf.function(lambda t, m=model: m(t, training=False), input_signature=spec)
            xla = tf.function(lambda t, m=model: m(t, training=False), input_signature=spec, jit_compile=True)
            path = Path(folder) / f"{name}.onnx"
            tf2onnx.convert.from_function(traced, input_signature=spec, opset=17, output_path=str(path))
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            feed = session.get_inputs()[0].name
            reference = traced(x).numpy()
            runtimes = {
                "tensorflow_eager": lambda: model(x, training=False).numpy(),
                "tensorflow_function": lambda: traced(x).numpy(),
                "tensorflow_xla": lambda: xla(x).numpy(),
                "onnxruntime": lambda: session.run(None, {feed: x})[0],
            }
            figures = {}
            for runtime, fn in runtimes.items():
                out = fn()
                seconds = _timed(fn, repeats)
                per_input = [1000 * s / len(x) for s in seconds]
                figures[runtime] = {
                    "ms_per_call": summary([1000 * s for s in seconds]),
                    "ms_per_slice": summary(per_input),
                    "max_abs_difference_to_tf_function": float(np.abs(out - reference).max()),
                    "same_argmax_fraction": float((out.argmax(-1) == reference.argmax(-1)).mean()),
                }
            fastest = min(v["ms_per_call"]["median"] for v in figures.values())
            for v in figures.values():
                v["ratio_to_fastest"] = v["ms_per_call"]["median"] / fastest
            results[name] = {"inputs": len(x), "size": size, "runtimes": figures}
        results["startup"] = {"tensorflow": _startup("tensorflow"), "onnxruntime": _startup("onnxruntime", folder)}
    return results


# ru_maxrss survives exec on Linux (it would report the benchmark's own peak): read VmHWM
_PEAK = """
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
t = time.perf_counter()
"""
_STARTUP = {
    "tensorflow": """
import time, json
PEAK
from pipeline.networks import build_unet
from worker.settings import Settings
s = Settings(); m = build_unet(classes=4, input_size=256); m.load_weights(s.first_network_weights())
print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss_mib": peak()}))
""",
    "onnxruntime": """
import time, json, sys
PEAK
import onnxruntime as ort
s = ort.InferenceSession(sys.argv[1] + "/unet.onnx", providers=["CPUExecutionProvider"])
print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss_mib": peak()}))
""",
}


def _startup(runtime: str, folder: str = "") -> dict:
    """Import and load the U-Net in a fresh process: what every worker pays once."""
    code = _STARTUP[runtime].replace("PEAK", _PEAK)
    done = subprocess.run([sys.executable, "-c", code, folder], capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])
