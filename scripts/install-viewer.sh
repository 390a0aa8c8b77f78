#!/usr/bin/env bash
# Installs the OHIF Viewer that the viewer tests drive (tests/viewer/): the prebuilt web app
# that the npm package @ohif/app ships in dist/, pinned, into build/ohif/ (index.html at its
# top), with compose/ohif/app-config.js as its app-config.js (a DICOMweb data source at the
# same origin). The one tarball is fetched from the npm registry (LUMBARNODE_NPM_REGISTRY) and
# checked against the registry's SHA-512, as npm would; only dist/ is extracted, nothing is run.
# Idempotent: nothing is fetched when the pinned version is already there. Every failure is
# one line on stderr and a non-zero exit.
set -euo pipefail

OHIF_VERSION=3.13.2
REGISTRY=${LUMBARNODE_NPM_REGISTRY:-https://registry.npmjs.org}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${LUMBARNODE_OHIF_DIR:-$ROOT/build/ohif}
CONFIG=$ROOT/compose/ohif/app-config.js
STAMP=$DEST/.ohif-version
WANT="@ohif/app@$OHIF_VERSION"

fail() { echo "install-viewer: $*" >&2; exit 1; }

[[ -f $CONFIG ]] || fail "missing $CONFIG"
if [[ -f $STAMP && "$(cat "$STAMP")" == "$WANT" && -f $DEST/index.html ]]; then
    cmp -s "$CONFIG" "$DEST/app-config.js" || cp "$CONFIG" "$DEST/app-config.js"
    echo "install-viewer: $WANT already in $DEST"
    exit 0
fi

command -v python3 >/dev/null || fail "python3 is not installed"
command -v tar >/dev/null || fail "tar is not installed"

mkdir -p "$(dirname "$DEST")"
WORK=$(mktemp -d "$(dirname "$DEST")/.ohif-install.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

echo "install-viewer: fetching $WANT from $REGISTRY"
TARBALL=$WORK/ohif-app-$OHIF_VERSION.tgz
# The registry's metadata names the tarball and its SHA-512 (what npm itself checks): a
# tarball that does not match is refused. No npm needed, nothing of the package is run.
python3 - "$REGISTRY" "$OHIF_VERSION" "$TARBALL" <<'PY' || fail "could not fetch $WANT from $REGISTRY"
import base64, hashlib, json, sys, urllib.request
registry, version, target = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
with urllib.request.urlopen(f"{registry}/@ohif%2fapp/{version}", timeout=60) as response:
    dist = json.load(response)["dist"]
algorithm, _, expected = dist["integrity"].partition("-")
if algorithm != "sha512":
    sys.exit(f"install-viewer: unexpected integrity {dist['integrity'][:20]}...")
digest = hashlib.sha512()
with urllib.request.urlopen(dist["tarball"], timeout=300) as response, open(target, "wb") as out:
    while chunk := response.read(1 << 20):
        digest.update(chunk)
        out.write(chunk)
if base64.b64encode(digest.digest()).decode() != expected:
    sys.exit(f"install-viewer: {dist['tarball']} does not match the registry's sha512")
PY

tar -xzf "$TARBALL" -C "$WORK" package/package.json package/dist ||
    fail "could not extract dist/ from $TARBALL"
GOT=$(sed -n 's/^  "version": "\(.*\)",$/\1/p' "$WORK/package/package.json" | head -n 1)
[[ $GOT == "$OHIF_VERSION" ]] || fail "$TARBALL is version '$GOT', expected $OHIF_VERSION"
[[ -f $WORK/package/dist/index.html ]] || fail "$TARBALL has no dist/index.html"
ls "$WORK"/package/dist/app.bundle.*.js >/dev/null 2>&1 || fail "$TARBALL has no dist/app.bundle.*.js"

cp "$WORK/package/dist/app-config.js" "$WORK/package/dist/app-config.shipped.js"
cp "$CONFIG" "$WORK/package/dist/app-config.js"
echo "$WANT" >"$WORK/package/dist/.ohif-version"

rm -rf "$DEST"
mv "$WORK/package/dist" "$DEST"
echo "install-viewer: $WANT installed in $DEST ($(du -sh "$DEST" | cut -f1))"
