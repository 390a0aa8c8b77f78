"""One vocabulary of reasons (dicom_io/reasons.py): every code triage, the loader, assembly
and the method store is one of its members, and each says whether its job is skipped or failed."""

from __future__ import annotations

import pytest

from dicom_io import errors
from dicom_io.reasons import Reason, parse, sentence

# The loader's refusals that mean "not for the method" (skipped), as the worker has always
# treated them; the rest are files that should have been usable (failed).
SKIPPED_BY_THE_LOADER = {"not_mr", "not_sagittal", "mixed_series", "mixed_geometry", "single_slice",
                         "duplicate_slice_positions", "missing_geometry", "unsupported_image"}


def loader_refusals() -> list[type[errors.SeriesRefused]]:
    found, todo = [], [errors.SeriesRefused]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_every_loader_refusal_is_in_the_vocabulary_with_its_outcome():
    refusals = loader_refusals()
    assert len(refusals) >= 14
    for cls in refusals:
        reason = Reason(cls.reason)  # raises for a code outside the vocabulary
        assert reason.skips == (reason in SKIPPED_BY_THE_LOADER), cls.__name__
    assert {Reason(cls.reason) for cls in refusals if Reason(cls.reason).skips} == SKIPPED_BY_THE_LOADER


def test_a_stored_code_reads_back_as_its_reason_detail_and_sentence():
    assert Reason.NOT_SAGITTAL.coded("axial") == "not_sagittal:axial"
    assert parse("not_sagittal:axial") == (Reason.NOT_SAGITTAL, "axial")
    assert sentence("not_sagittal:axial") == "not a sagittal series (axial)"
    assert sentence("no_spine_found").startswith("no spine found")
    assert Reason.NO_SPINE_FOUND.skips is False and Reason.INCOMPLETE_SERIES.skips is True
    with pytest.raises(ValueError):
        parse("no_such_reason:x")
