"""`python -m bench [--quick] [--only ingest,dicomweb,latency,inference,ensemble,throughput]`: run the
benchmarks, print a table, write bench/results.json (machine, versions, every figure)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results.json"
PARTS = ("ingest", "dicomweb", "latency", "inference", "ensemble", "throughput")


def machine() -> dict:
    dcmtk = subprocess.run(["/usr/bin/storescp", "--version"], capture_output=True, text=True).stdout.splitlines()
    dcmtk = [line.replace("$dcmtk: ", "DCMTK ") for line in dcmtk]
    versions = {name: version(name) for name in ("lumbarnode", "pynetdicom", "pydicom", "highdicom", "celery",
                                                 "tensorflow-cpu", "onnxruntime", "tf2onnx")
                if _installed(name)}
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform(),
            "dcmtk": next((line for line in dcmtk if "DCMTK" in line), "unknown"), "versions": versions}


def _installed(name: str) -> bool:
    try:
        version(name)
        return True
    except Exception:
        return False


def _run_part(part: str, quick: bool):
    repeats = 1 if quick else 3
    if part == "ingest":
        from bench import ingest

        return ingest.run(repeats)
    if part == "dicomweb":
        from bench import dicomweb

        return dicomweb.run(repeats)
    if part == "latency":
        from bench import latency

        return [latency.latency(b, 2 if quick else 5) for b in ("embedded", "postgresql+redis")]
    if part == "inference":
        from bench import inference

        return inference.run(2 if quick else 5)
    if part == "ensemble":
        from bench import ensemble

        return ensemble.run(2 if quick else 3)
    from bench import latency  # throughput

    return [latency.throughput(n, 3 if quick else 6) for n in (1, 2)]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated: {', '.join(PARTS)}")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run, not for reporting)")
    args = parser.parse_args()
    parts = args.only.split(",")
    report: dict = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(), "figures": {}}
    figures = report["figures"]
    started = time.perf_counter()
    for part in (p for p in PARTS if p in parts):
        figures[part] = _run_part(part, args.quick)
        # written after every part: a later part that fails keeps the figures already measured
        RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    report["seconds"] = time.perf_counter() - started
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"\nwritten to {RESULTS}")
    return 0


def print_table(report: dict) -> None:
    f = report["figures"]
    m = report["machine"]
    print(f"machine: {m['cores']} cores, {m['memory_gib']} GiB, {m['platform']}; {m['dcmtk']}")
    if "ingest" in f:
        i = f["ingest"]
        print(f"\ningest ({i['instances']} instances {i['size']}; node with {i['listener_processes']} listener "
              f"processes; median of {i['node_1_assoc']['runs']} runs, instances/s)")
        print(f"{'':<18}{'node':>8}{'storescp':>10}{'ratio':>7}{'Orthanc':>9}{'ratio':>7}{'pynetdicom bare':>17}{'ratio':>7}")
        for n in (1, 2, 4):
            print(f"{f'{n} association(s)':<18}{i[f'node_{n}_assoc']['median']:>8.0f}"
                  f"{i[f'storescp_{n}_assoc']['median']:>10.0f}{i[f'ratio_to_storescp_{n}_assoc']:>7.2f}"
                  f"{i[f'orthanc_{n}_assoc']['median']:>9.0f}{i[f'ratio_to_orthanc_{n}_assoc']:>7.2f}"
                  f"{i[f'pynetdicom_bare_{n}_assoc']['median']:>17.0f}{i[f'ratio_to_pynetdicom_bare_{n}_assoc']:>7.2f}")
        print("  scaling at 4 associations, listener processes: "
              + ", ".join(f"{k}: {v:.0f}/s" for k, v in i["scaling_4_assoc"].items()))
        print("  (pynetdicom bare: an SCP that answers success and stores nothing: one process's ceiling)")
    if "dicomweb" in f:
        w = f["dicomweb"]
        print(f"\nDICOMweb ({w['instances']} instances, {w['batch']} a STOW-RS request; median of "
              f"{w['node_stow']['runs']} runs, instances/s)")
        print(f"  ingest: node STOW-RS {w['node_stow']['median']:.0f}, Orthanc STOW-RS {w['orthanc_stow']['median']:.0f} "
              f"(ratio {w['ratio_node_stow_to_orthanc_stow']:.2f}); node C-STORE {w['node_cstore']['median']:.0f} "
              f"(STOW/C-STORE {w['ratio_node_stow_to_node_cstore']:.2f})")
        print(f"  export to Orthanc: STOW-RS {w['export_stow']['median']:.0f}, C-STORE {w['export_cstore']['median']:.0f} "
              f"(ratio {w['ratio_export_stow_to_cstore']:.2f})")
    for run in f.get("latency", []):
        s = run["seconds"]
        print(f"\nend-to-end latency, {run['backend']}: median {s['median']:.2f} s (min {s['min']:.2f}, max {s['max']:.2f}, "
              f"{s['runs']} series); after the quiet period {run['after_quiet_period_s']:.2f} s")
        print("  stages: " + ", ".join(f"{k} {v:.2f}" for k, v in run["stages_median_s"].items()))
    if "inference" in f:
        inf = f["inference"]
        for name in ("unet", "deteclordose"):
            print(f"\ninference {name} ({inf[name]['inputs']} input(s) of {inf[name]['size']} px):")
            print(f"  {'runtime':<22}{'ms/call':>9}{'ms/slice':>10}{'x fastest':>11}{'max |diff|':>12}{'argmax same':>13}")
            for runtime, v in inf[name]["runtimes"].items():
                print(f"  {runtime:<22}{v['ms_per_call']['median']:>9.1f}{v['ms_per_slice']['median']:>10.1f}"
                      f"{v['ratio_to_fastest']:>11.2f}{v['max_abs_difference_to_tf_function']:>12.2e}"
                      f"{v['same_argmax_fraction']:>13.4f}")
        for runtime, v in inf["startup"].items():
            print(f"  start-up {runtime}: {v['seconds']:.2f} s, {v['peak_rss_mib']:.0f} MiB")
    if "ensemble" in f:
        e = f["ensemble"]
        print(f"\nensemble, a {e['slices']}-slice {e['size']}x{e['size']} series (seconds per series, peak RSS MiB; "
              "fresh process each)")
        print(f"  {'members':<22}{'passes':>7}{'TF batched':>12}{'RSS':>7}{'TF one by one':>15}{'ratio':>7}"
              f"{'ONNX Runtime':>14}{'RSS':>7}{'ratio':>7}")
        for name, row in e["configurations"].items():
            b = row["tensorflow_batched"]
            line = (f"  {name.replace('_', ' '):<22}{row['passes']:>7}{b['seconds_per_series']['median']:>12.2f}"
                    f"{b['peak_rss_mib']:>7.0f}")
            if "onnxruntime" in row:
                one, ort = row["tensorflow_one_by_one"], row["onnxruntime"]
                line += (f"{one['seconds_per_series']['median']:>15.2f}{one['ratio_to_tensorflow_batched']:>7.2f}"
                         f"{ort['seconds_per_series']['median']:>14.2f}{ort['peak_rss_mib']:>7.0f}"
                         f"{ort['ratio_to_tensorflow_batched']:>7.2f}")
            print(line)
    for run in f.get("throughput", []):
        print(f"\nthroughput with {run['inference_workers']} inference worker(s): {run['series_per_minute']:.1f} series/min "
              f"({run['series']} series); inference worker peak RSS {run['worker_peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    raise SystemExit(main())
