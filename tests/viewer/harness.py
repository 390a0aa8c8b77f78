"""A harness that shows our DICOM results in the real OHIF Viewer and reads back what OHIF
itself says about them.

One loopback origin: a small stdlib HTTP server serves the OHIF build (build/ohif/, from
scripts/install-viewer.sh) at its root and forwards /dicom-web/ and /wado to an Orthanc
(Debian package, DICOMweb plugin) started here with a throwaway configuration and storage.
OHIF's build is made for the root of its origin (its index.html loads "/app-config.js" and
"/app.bundle.*.js", and every chunk is fetched from publicPath "/"), so the viewer is served at
"/" by this server rather than under a sub-path of Orthanc's ServeFolders plugin.

Headless Chromium (Debian's, driven by Playwright) opens /viewer?StudyInstanceUIDs=...; the
state is read from OHIF's own services, which OHIF 3.13's cornerstone extension puts on
`window.services` (displaySetService, segmentationService, measurementService,
viewportGridService, ...), and from cornerstone's annotation state. Console errors, uncaught
page errors and failed requests are collected; `report()` formats all of it for a failing
assertion, and `screenshot()` writes PNGs into test-artifacts/viewer/.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import mimetypes
import os
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers.orthanc import Orthanc

ROOT = Path(__file__).resolve().parents[2]
OHIF_VERSION = "3.13.2"
OHIF_DIR = Path(os.environ.get("LUMBARNODE_OHIF_DIR", ROOT / "build" / "ohif"))
ARTIFACTS = ROOT / "test-artifacts" / "viewer"
CHROMIUM_ARGS = [
    # WebGL on the CPU (SwiftShader): cornerstone3D renders through WebGL; without it OHIF
    # falls back to its CPU renderer, which is not what a radiologist's browser runs.
    "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
    "--disable-dev-shm-usage",
]


class ViewerSetupError(RuntimeError):
    pass


def ohif_dir() -> Path:
    """The installed OHIF build, checked: the pinned version and our app-config.js."""
    stamp = OHIF_DIR / ".ohif-version"
    if not (OHIF_DIR / "index.html").is_file() or not stamp.is_file():
        raise ViewerSetupError(f"OHIF is not installed in {OHIF_DIR}: run `bash scripts/install-viewer.sh` "
                               "(`make test` does)")
    if stamp.read_text().strip() != f"@ohif/app@{OHIF_VERSION}":
        raise ViewerSetupError(f"{OHIF_DIR} holds {stamp.read_text().strip()}, the tests are written for "
                               f"@ohif/app@{OHIF_VERSION}: run `bash scripts/install-viewer.sh`")
    return OHIF_DIR


# -- one origin: OHIF's files and Orthanc's DICOMweb ------------------------------------

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
               "transfer-encoding", "upgrade", "host", "content-length"}
_FORWARDED = ("/dicom-web/", "/wado")
_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
          ".json": "application/json", ".jsonc": "application/json", ".css": "text/css",
          ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml", ".woff2": "font/woff2"}
_NO_CACHE = {"/index.html", "/app-config.js"}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: SameOrigin

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's names
        self._route()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_OPTIONS = do_GET

    def _route(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith(_FORWARDED):
            self._forward()
        elif self.command in ("GET", "HEAD"):
            self._static(path)
        else:
            self._send(405, b"method not allowed", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        connection = http.client.HTTPConnection("127.0.0.1", self.server.backend_port, timeout=120)
        try:
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
        except OSError as error:
            self.server.note(self.command, self.path, 502)
            self._send(502, f"Orthanc did not answer: {error}".encode(), "text/plain")
            return
        finally:
            connection.close()
        self.server.note(self.command, self.path, response.status)
        self.send_response(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _static(self, path: str) -> None:
        root = self.server.static_root
        target = (root / urllib.parse.unquote(path).lstrip("/")).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            target, path = root / "index.html", "/index.html"  # OHIF routes (/viewer, ...) are the SPA's
        content_type = _TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        cache = "no-cache" if path in _NO_CACHE else "public, max-age=86400"
        size = target.stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", cache)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if self.command != "HEAD":
            with open(target, "rb") as handle:
                shutil.copyfileobj(handle, self.wfile, 1 << 20)


class SameOrigin(http.server.ThreadingHTTPServer):
    """OHIF's build at "/", Orthanc's /dicom-web/ and /wado forwarded, on one loopback port."""

    daemon_threads = True

    def __init__(self, static_root: Path, backend_port: int):
        self.static_root = static_root.resolve()
        self.backend_port = backend_port
        self.requests: list[tuple[str, str, int]] = []  # forwarded (method, path, status)
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)
        self.port = self.server_address[1]
        self._thread = threading.Thread(target=self.serve_forever, name="viewer-origin", daemon=True)
        self._thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def note(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, status))

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(10)


# -- what OHIF says -------------------------------------------------------------------

# Everything read from the page goes through this one function, so that a failing check can
# print the same picture: display sets, viewports, segmentations, measurements, SR display
# sets as OHIF parsed them, cornerstone annotations, open dialogs.
_STATE_JS = r"""
() => {
  const s = window.services;
  if (!s || !s.displaySetService) return null;
  const safe = (fn, fallback = null) => { try { return fn(); } catch (e) { return `error: ${e}`; } };
  const seq = x => (x == null ? [] : Array.isArray(x) ? x : [x]);
  const displaySets = s.displaySetService.getActiveDisplaySets().map(d => ({
    uid: d.displaySetInstanceUID, modality: d.Modality, seriesNumber: d.SeriesNumber ?? null,
    description: d.SeriesDescription ?? null, label: d.label ?? null,
    seriesInstanceUID: d.SeriesInstanceUID, sopClassUID: d.SOPClassUID ?? null,
    handler: d.SOPClassHandlerId ?? null, frames: d.numImageFrames ?? (d.instances ? d.instances.length : null),
    isDerived: !!d.isDerivedDisplaySet, isLoaded: d.isLoaded ?? null, isHydrated: d.isHydrated ?? null,
    isRehydratable: d.isRehydratable ?? null, unsupported: !!d.unsupported,
    loadError: d.loadError ? String(d.loadError) : null,
    messages: safe(() => (d.messages && d.messages.messages ? d.messages.messages.map(m => m.id) : [])),
    referencedDisplaySetInstanceUID: d.referencedDisplaySetInstanceUID ?? null,
    segmentCount: d.segments ? Object.keys(d.segments).length : null,
    srMeasurements: d.Modality === 'SR' && Array.isArray(d.measurements) ? d.measurements.map(m => ({
      trackingIdentifier: m.TrackingIdentifier ?? null, trackingUID: m.TrackingUniqueIdentifier ?? null,
      loaded: m.loaded ?? null, labels: (m.labels || []).map(l => ({label: l.label, value: l.value})),
      graphicType: m.graphicType ?? null, graphicCode: m.graphicCode ?? null, pointsLength: m.pointsLength ?? null,
      coords: (m.coords || []).map(c => ({valueType: c.ValueType, graphicType: c.GraphicType,
        points: c.GraphicData ? c.GraphicData.length / (c.ValueType === 'SCOORD3D' ? 3 : 2) : 0,
        sop: c.ReferencedSOPSequence ? (seq(c.ReferencedSOPSequence)[0] || {}).ReferencedSOPInstanceUID ?? null : null})),
      imageId: m.imageId ?? null, displaySetInstanceUID: m.displaySetInstanceUID ?? null,
    })) : null,
  }));
  const grid = safe(() => s.viewportGridService.getState());
  const gridViewports = grid && grid.viewports && grid.viewports.values ? [...grid.viewports.values()] : [];
  const viewports = gridViewports.map(v => ({
    id: v.viewportId, displaySetInstanceUIDs: v.displaySetInstanceUIDs || [],
    type: v.viewportOptions ? v.viewportOptions.viewportType ?? null : null,
    representations: safe(() => s.segmentationService.getSegmentationRepresentations(v.viewportId)
      .map(r => ({segmentationId: r.segmentationId, type: r.type, visible: r.visible ?? null})), []),
  }));
  const rendered = safe(() => window.cornerstone.getRenderingEngines().flatMap(e => e.getViewports().map(vp => {
    let imageId = null, hasImage = false, actors = 0;
    try { imageId = vp.getCurrentImageId ? vp.getCurrentImageId() : null; } catch (e) {}
    try { hasImage = !!(vp.getImageData && vp.getImageData()); } catch (e) {}
    try { actors = vp.getActors ? vp.getActors().length : 0; } catch (e) {}
    return {id: vp.id, type: vp.type, imageId, hasImage, actors};
  })), []);
  const segmentations = safe(() => s.segmentationService.getSegmentations().map(g => ({
    id: g.segmentationId, label: g.label ?? null,
    segments: Object.values(g.segments || {}).filter(Boolean).map(x => ({index: x.segmentIndex, label: x.label ?? null})),
  })), []);
  const measurements = safe(() => s.measurementService.getMeasurements().map(m => ({
    uid: m.uid, toolName: m.toolName ?? null, label: m.label ?? null,
    displayText: m.displayText ?? null, points: m.points ? m.points.length : 0,
    referencedImageId: m.referencedImageId ?? null, sopInstanceUID: m.SOPInstanceUID ?? null,
    displaySetInstanceUID: m.displaySetInstanceUID ?? null,
  })), []);
  const annotations = safe(() => {
    const entry = window.extensionManager.getModuleEntry('@ohif/extension-cornerstone.utilityModule.common');
    const tools = entry.exports.getCornerstoneLibraries().cornerstoneTools;
    return tools.annotation.state.getAllAnnotations().map(a => ({
      uid: a.annotationUID, toolName: a.metadata ? a.metadata.toolName : null,
      referencedImageId: a.metadata ? a.metadata.referencedImageId ?? null : null,
      handles: a.data && a.data.handles && a.data.handles.points ? a.data.handles.points.length : 0,
      renderable: a.data && a.data.renderableData ? Object.fromEntries(Object.entries(a.data.renderableData)
        .map(([k, v]) => [k, v.map(p => p.length)])) : null,
      label: a.data ? a.data.label ?? null : null,
      labels: a.data && a.data.labels ? a.data.labels.map(l => `${l.label}: ${l.value}`) : null,
      angle: a.data && a.data.cachedStats ? Object.values(a.data.cachedStats).map(c => c && c.angle).find(x => x != null) ?? null : null,
    }));
  }, []);
  const dialogs = [...document.querySelectorAll('[role="dialog"], [role="alertdialog"]')]
    .map(d => d.innerText.trim()).filter(Boolean);
  const toasts = [...document.querySelectorAll('[data-sonner-toast]')]
    .map(t => `${t.getAttribute('data-type') || 'toast'}: ${t.innerText.trim().replace(/\s+/g, ' ')}`);
  return {errors: window.__viewerErrors || [], toasts, displaySets, viewports, activeViewportId: grid && grid.activeViewportId || null, rendered, segmentations,
          measurements, annotations, dialogs, url: location.pathname + location.search};
}
"""


@dataclass
class ViewerPage:
    """One OHIF page, with everything it reported."""

    page: Any  # playwright.sync_api.Page
    base: str
    name: str
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # console errors and uncaught page errors
    failed_requests: list[str] = field(default_factory=list)
    screenshots: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error.name}: {error.message}"
                                                                   f"\n    {_first_lines(error.stack, 4)}"))
        self.page.on("requestfailed", lambda r: self.failed_requests.append(f"{r.method} {r.url}: {r.failure}"))
        self.page.on("response", self._on_response)

    def _on_console(self, message: Any) -> None:
        text = f"console.{message.type}: {message.text}"
        self.console.append(text[:2000])
        if message.type == "error":
            self.errors.append(text[:2000])

    def _on_response(self, response: Any) -> None:
        if response.status >= 400:
            self.failed_requests.append(f"{response.request.method} {response.url}: HTTP {response.status}")

    # -- reading -------------------------------------------------------------------

    def state(self) -> dict | None:
        """OHIF's state now; None while OHIF has not started (or the page is navigating).
        Errors that OHIF swallowed (see _INIT_JS) are added to `errors`."""
        try:
            state = self.page.evaluate(_STATE_JS)
            if state is not None:
                self._swallowed = getattr(self, "_swallowed", 0)
                new = state["errors"][self._swallowed:]
                self.errors += new
                self._swallowed += len(new)
            return state
        except Exception as error:  # noqa: BLE001 - playwright's Error while a navigation replaces the page
            if "context was destroyed" in str(error) or "navigation" in str(error).lower():
                return None
            raise

    def until(self, check: Callable[[dict], Any], timeout_s: float, what: str, stop_on_error: bool = False) -> Any:
        """Poll OHIF's state until `check(state)` is truthy (returns it); fail with the report
        after `timeout_s`, or at once on a console/page error when `stop_on_error`."""
        deadline = time.monotonic() + timeout_s
        errors_before = len(self.errors)
        while True:
            state = self.state()
            value = check(state) if state is not None else None
            if value and not (stop_on_error and len(self.errors) > errors_before):
                return value
            if stop_on_error and len(self.errors) > errors_before:
                self.page.wait_for_timeout(300)  # let the rest of the same failure arrive for the report
                raise AssertionError(f"OHIF reported an error while waiting for {what}\n{self.report(state)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{self.report(state)}")
            self.page.wait_for_timeout(150)

    def display_set(self, modality: str, state: dict | None = None) -> dict:
        state = state or self.state()
        found = [d for d in state["displaySets"] if d["modality"] == modality]
        if len(found) != 1:
            raise AssertionError(f"expected one {modality} display set, OHIF has {len(found)}\n{self.report(state)}")
        return found[0]

    # -- doing ---------------------------------------------------------------------

    def open_study(self, study_uid: str, display_sets: int, timeout_s: float = 60) -> dict:
        """Open /viewer for the study; wait for `display_sets` display sets and a rendered image."""
        self.page.goto(f"{self.base}/viewer?StudyInstanceUIDs={study_uid}", wait_until="domcontentloaded",
                       timeout=timeout_s * 1000)

        def ready(state: dict) -> dict | None:
            if len(state["displaySets"]) < display_sets:
                return None
            if not shown_image(state):
                return None
            return state

        return self.until(ready, timeout_s, f"OHIF to list {display_sets} display sets and render an image")

    def double_click_thumbnail(self, display_set_uid: str, timeout_s: float = 20) -> None:
        """What a radiologist does: double-click the series in the study browser."""
        thumbnail = self.page.locator(f'[id="thumbnail-{display_set_uid}"]')
        thumbnail.wait_for(state="visible", timeout=timeout_s * 1000)
        thumbnail.dblclick(timeout=timeout_s * 1000)

    def answer_prompt(self, button: str, timeout_s: float = 10) -> bool:
        """Click `button` ("Yes", "No", ...) of the prompt OHIF shows in the viewport (or in a
        dialog) if one comes within `timeout_s`; False when none came."""
        locator = self.page.get_by_role("button", name=button, exact=True)
        try:
            locator.first.wait_for(state="visible", timeout=timeout_s * 1000)
        except Exception:  # noqa: BLE001 - Playwright's TimeoutError: no such prompt
            return False
        locator.first.click(timeout=timeout_s * 1000)
        return True

    def prompts(self) -> list[str]:
        """The text of the notifications OHIF shows over viewports ("Do you want to open ...")."""
        return self.page.evaluate("""() => [...document.querySelectorAll('[data-cy="viewport-pane"] *')]
            .filter(e => e.children.length === 0 && /\\?$/.test(e.textContent.trim()) && e.textContent.trim().length > 8)
            .map(e => e.textContent.trim())""")

    def show_image(self, sop_instance_uid: str, timeout_s: float = 20) -> dict:
        """Scroll the active viewport to the image with this SOP Instance UID and wait for it."""
        moved = self.page.evaluate("""(sop) => {
            const s = window.services;
            const id = s.viewportGridService.getActiveViewportId();
            const vp = s.cornerstoneViewportService.getCornerstoneViewport(id);
            if (!vp || !vp.getImageIds) return 'no stack viewport';
            const index = vp.getImageIds().findIndex(i => i.includes(`/instances/${sop}/`));
            if (index < 0) return 'image not in the viewport';
            vp.setImageIdIndex(index);
            return 'ok';
        }""", sop_instance_uid)
        if moved != "ok":
            raise AssertionError(f"cannot show image {sop_instance_uid}: {moved}\n{self.report()}")
        return self.until(lambda s: f"/instances/{sop_instance_uid}/" in (shown_image(s) or "") and s,
                          timeout_s, f"the viewport to show image {sop_instance_uid}")

    def open_panel(self, kind: str) -> str | None:
        """Open the right-hand panel whose id names `kind` ("segmentation", "measurements"), as
        a click on its icon does; the id opened, or None when the mode has no such panel."""
        panel = self.page.evaluate("""(kind) => {
            const panels = window.services.panelService.getPanels('right');
            const panel = panels.find(p => p.id.toLowerCase().includes(kind));
            if (!panel) return null;
            window.services.panelService.activatePanel(panel.id, true);
            return panel.id;
        }""", kind.lower())
        if panel:
            self.page.wait_for_timeout(400)  # the side panel slides in (CSS transition) before a screenshot
        return panel

    def viewport_text(self) -> str:
        """The text OHIF writes into the active viewport (the SR text view, overlays)."""
        return self.page.evaluate("""() => {
            const pane = document.querySelector('[data-cy="viewport-pane"]');
            return pane ? pane.innerText.trim() : '';
        }""")

    def viewport_colour_fraction(self, screenshot: Path | None = None) -> float:
        """The share of the active viewport's pixels that are clearly coloured (MR is grey; a
        segmentation overlay is not): a rough check that OHIF draws the overlay. Reads the
        viewport's box out of `screenshot` (a full-page PNG just taken) when given, which is
        cheaper than a new screenshot."""
        import cv2
        import numpy as np

        pane = self.page.locator('[data-cy="viewport-pane"]').first
        if screenshot is None:
            image = cv2.imdecode(np.frombuffer(pane.screenshot(), np.uint8), cv2.IMREAD_COLOR)
        else:
            box = pane.bounding_box()
            image = cv2.imread(str(screenshot), cv2.IMREAD_COLOR)
            x, y, w, h = (int(round(box[k])) for k in ("x", "y", "width", "height"))
            image = image[y:y + h, x:x + w]
        image = image.astype(np.int16)
        spread = image.max(axis=2) - image.min(axis=2)
        return float((spread > 60).mean())

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path))
        self.screenshots.append(path)
        return path

    # -- telling -------------------------------------------------------------------

    def report(self, state: dict | None = None) -> str:
        """What OHIF reported: errors first, then display sets, viewports, segmentations,
        measurements, SR display sets, annotations, dialogs, failed requests."""
        if state is None:
            try:
                state = self.state()
            except Exception as error:  # noqa: BLE001 - the page may be gone
                state = {"error": repr(error)}
        lines = [f"--- what OHIF reported ({self.name}) ---"]
        lines.append(f"console errors and page errors ({len(self.errors)}):")
        lines += [f"  {e}" for e in self.errors[-15:]] or ["  none"]
        if state is None:
            lines.append("window.services is not there (OHIF did not start)")
        elif "error" in state:
            lines.append(f"state unreadable: {state['error']}")
        else:
            lines.append(f"url: {state['url']}")
            lines.append("display sets:")
            for d in state["displaySets"]:
                lines.append(f"  {d['modality']} S:{d['seriesNumber']} {d['description']!r} frames={d['frames']} "
                             f"handler={(d['handler'] or '').rsplit('.', 1)[-1]} loaded={d['isLoaded']} "
                             f"hydrated={d['isHydrated']} rehydratable={d['isRehydratable']} "
                             f"unsupported={d['unsupported']} messages={d['messages']} uid={d['uid']}")
                for m in d["srMeasurements"] or []:
                    lines.append(f"    SR measurement {m['trackingIdentifier']!r} loaded={m['loaded']} "
                                 f"labels={m['labels']} coords={m['coords']}")
            lines.append(f"viewports (active {state['activeViewportId']}): {json.dumps(state['viewports'])}")
            lines.append(f"rendered: {json.dumps(state['rendered'])}")
            lines.append(f"segmentations: {json.dumps(state['segmentations'])}")
            lines.append(f"measurements: {json.dumps(state['measurements'])}")
            lines.append(f"annotations: {json.dumps(state['annotations'])}")
            lines.append(f"dialogs: {json.dumps(state['dialogs'])}")
            lines.append(f"notifications: {json.dumps(state['toasts'])}")
        if self.failed_requests:
            lines.append("failed requests:")
            lines += [f"  {r}" for r in self.failed_requests[-10:]]
        warnings = [c for c in self.console if c.startswith("console.warn")]
        if warnings:
            lines.append(f"console warnings (last {min(len(warnings), 8)} of {len(warnings)}):")
            lines += [f"  {w[:400]}" for w in warnings[-8:]]
        if self.screenshots:
            lines.append(f"screenshots: {', '.join(str(p) for p in self.screenshots)}")
        return "\n".join(lines)


_INIT_JS = """
// a returning user: OHIF's onboarding tour (Shepherd) would cover the study browser
try { localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour'])); } catch (e) {}
// OHIF's ErrorBoundary calls preventDefault() on unhandled promise rejections and shows a
// "Something went wrong" toast instead (no console error, no page error): record every one
// (and every uncaught error) before OHIF's listeners see it.
window.__viewerErrors = [];
const __describe = (kind, x) => {
  if (x && x.stack) return `${kind}: ${x.stack.split('\\n').slice(0, 5).join('\\n    ')}`;
  return `${kind}: ${x && x.message || String(x)}`;
};
window.addEventListener('unhandledrejection', e => window.__viewerErrors.push(__describe('unhandled rejection', e.reason)));
window.addEventListener('error', e => window.__viewerErrors.push(__describe('uncaught error', e.error || e.message)));
"""


def shown_image(state: dict) -> str | None:
    """The imageId that the active viewport of the grid has rendered, if any (the thumbnails'
    offscreen viewports are not the grid's)."""
    active = state.get("activeViewportId")
    for viewport in state.get("rendered") or []:
        if isinstance(viewport, dict) and viewport["id"] == active and viewport["hasImage"]:
            return viewport["imageId"] or ""
    return None


_LINES_PER_TOOL = {"CobbAngle": 2, "SRCobbAngle": 2, "Angle": 2, "SRAngle": 2, "Length": 1, "SRLength": 1}


def lines_on_image(state: dict, sop_instance_uid: str, measured_only: bool = True) -> list[tuple[str, int]]:
    """(tool, number of straight lines) for each annotation drawn on the image with this SOP
    Instance UID. measured_only: only the annotations of measurementService's measurements
    (the measurement panel), else also the SR display tool's read-only preview, which draws
    each 2-point SCOORD POLYLINE as a line and a longer one as one joined polyline (0 lines)."""
    measured = {m["uid"] for m in state["measurements"]}
    found = []
    for annotation in state["annotations"]:
        image = annotation["referencedImageId"] or ""
        if f"/instances/{sop_instance_uid}/" not in image or (measured_only and annotation["uid"] not in measured):
            continue
        tool = annotation["toolName"]
        if tool == "DICOMSRDisplay":
            lines = sum(1 for points in (annotation["renderable"] or {}).get("POLYLINE", []) if points == 2)
        else:
            lines = _LINES_PER_TOOL.get(tool, 0)
        found.append((tool, lines))
    return found


def _first_lines(text: str | None, n: int) -> str:
    return "\n    ".join((text or "").splitlines()[:n])


class Viewer:
    """Orthanc + the one-origin server + a headless Chromium; pages are opened with `page()`."""

    def __init__(self, root: Path, playwright: Any):
        try:
            self.orthanc = Orthanc(root / "orthanc", name="lumbarnode-viewer-test", dicom=False)
        except FileNotFoundError as exc:
            raise ViewerSetupError(str(exc)) from None
        try:
            self.origin = SameOrigin(ohif_dir(), self.orthanc.http_port)
            self.browser = playwright.chromium.launch(executable_path=chromium(), headless=True, args=CHROMIUM_ARGS)
            # one context for all pages: the 20 MB of OHIF's scripts come from its cache after the first page
            self.context = self.browser.new_context(viewport={"width": 1400, "height": 900})
            self.context.add_init_script(_INIT_JS)
        except BaseException:
            self.orthanc.stop()
            raise

    @property
    def base(self) -> str:
        return self.origin.base

    def upload(self, paths: Iterable[Path]) -> list[dict]:
        return self.orthanc.upload(paths)

    @contextlib.contextmanager
    def page(self, name: str) -> Iterator[ViewerPage]:
        page = self.context.new_page()
        viewer_page = ViewerPage(page, self.base, name)
        try:
            yield viewer_page
        finally:
            page.close()

    def close(self) -> None:
        for step in (self.context.close, self.browser.close, self.origin.stop, self.orthanc.stop):
            with contextlib.suppress(Exception):
                step()


def chromium() -> str:
    """The system Chromium (Debian package `chromium`); LUMBARNODE_TEST_CHROMIUM overrides."""
    for candidate in (os.environ.get("LUMBARNODE_TEST_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    raise ViewerSetupError("chromium is not installed: run `make test`, which installs the Debian package chromium")


@contextlib.contextmanager
def viewer(root: Path) -> Iterator[Viewer]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = Viewer(root, playwright)
        try:
            yield instance
        finally:
            instance.close()
