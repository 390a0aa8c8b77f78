#!/usr/bin/env bash
# Debian packages the tests use for real: DCMTK (storescu, storescp, echoscu, dsrdump,
# dcmcjpeg...), dicom3tools (dciodvfy), Orthanc with DICOMweb (the test PACS), and the
# PostgreSQL and Redis servers, and Chromium (the admin page's browser test). Installs only what is missing.
set -euo pipefail

declare -A needs=(
  [dciodvfy]=dicom3tools [dsrdump]=dcmtk [storescu]=dcmtk [dcmcjpeg]=dcmtk [Orthanc]=orthanc
  [redis-server]=redis-server [pg_ctlcluster]=postgresql [chromium]=chromium
)
missing=()
for tool in "${!needs[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("${needs[$tool]}")
done
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing+=(orthanc-dicomweb)
[ ${#missing[@]} -eq 0 ] && exit 0

packages=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
echo "installing Debian packages: $packages"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
# Packages must not start their services at install time (the tests start what they need).
$sudo apt-get install -y --no-install-recommends $packages \
  || { $sudo apt-get update && $sudo apt-get install -y --no-install-recommends $packages; }
