"""Synthetic sagittal lumbar MR with exact labels and angles, for training, the demo and the
tests. Arrays in, arrays out, like the rest of pipeline/; writing one as DICOM is
worker/phantom_study.py's job."""
