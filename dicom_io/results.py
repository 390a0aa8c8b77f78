"""What the DICOM builders are given: the finding, the algorithms and who made them.

Plain data with no dependency on the pipeline, so that dicom_io stays free of ML: the worker
fills these from a pipeline Analysis. Pixel positions are (row, col) on the *source* image
as stored (not the canonical layout), which is what SR coordinates and viewers use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

from dicom_io.series import SliceRef

Point = tuple[float, float]  # (row, col) on the source image


def software_version() -> str:
    try:
        return version("lumbarnode")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class Algorithm:
    """A network as the results identify it: the weights are named by their SHA-256."""

    name: str
    version: str
    sha256: str


@dataclass(frozen=True)
class Producer:
    """The equipment that makes the results (General Equipment module)."""

    manufacturer: str = "lumbarnode"
    model_name: str = "lumbarnode"
    software_version: str = field(default_factory=software_version)
    device_serial_number: str = "lumbarnode"
    institution_name: str | None = None

    def stamp(self, ds) -> None:
        """Write the General Equipment attributes the SOP class constructors leave out."""
        ds.ManufacturerModelName = self.model_name
        ds.SoftwareVersions = self.software_version
        ds.DeviceSerialNumber = self.device_serial_number
        if self.institution_name:
            ds.InstitutionName = self.institution_name


@dataclass(frozen=True)
class LordosisFinding:
    """The result of the method on one series, as the SR and the key image report it."""

    measured_slice: SliceRef  # the source image (and frame) the angle was measured on
    lla_deg: float | None  # None: not measured, and `flags` says why
    lla_class: str | None  # "hypolordosis" | "normal" | "hyperlordosis"
    thresholds_deg: tuple[float, float]  # (low, high): < low hypo, >= high hyper
    endplates: dict[str, tuple[Point, Point]]  # level -> (anterior end, posterior end), source pixels
    flags: tuple[str, ...]
    segmentation: Algorithm
    classifier: Algorithm | None = None
    cnn_class: str | None = None
    cnn_probabilities: dict[str, float] = field(default_factory=dict)
    levels: tuple[str, ...] = ()  # identified levels, superior to inferior
    lla_spread_deg: float | None = None  # range of the ensemble members' own angles (the uncertainty)
    members: int = 1  # networks in the segmentation ensemble

    @property
    def measured(self) -> bool:
        return self.lla_deg is not None and "L1" in self.endplates and "S1" in self.endplates
