"""What a radiologist sees of our results in OHIF: the real OHIF Viewer build (npm @ohif/app,
installed by scripts/install-viewer.sh), a real Orthanc with DICOMweb, headless Chromium."""
