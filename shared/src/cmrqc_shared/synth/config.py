"""Configuration of the synthetic short-axis cine generator.

All lengths are in millimetres, times in milliseconds, probabilities in [0, 1].
"""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, ConfigDict, Field, model_validator

ARTEFACT_NAMES: tuple[str, ...] = (
    "ghosting",
    "misalignment",
    "wraparound",
    "banding",
    "missing_slices",
)
"""Names of the artefacts the generator knows, in the order they are sampled."""


class ArtefactProbabilities(BaseModel):
    """Probability that each artefact is applied to a study (independently)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ghosting: float = Field(0.15, ge=0.0, le=1.0)
    """Respiratory ghosting: phase-encode replicas of the image."""
    misalignment: float = Field(0.15, ge=0.0, le=1.0)
    """Inter-slice (breath-hold) misalignment: in-plane shifts of single slices."""
    wraparound: float = Field(0.10, ge=0.0, le=1.0)
    """Aliasing fold-over along the phase-encode direction (phase FOV too small)."""
    banding: float = Field(0.10, ge=0.0, le=1.0)
    """bSSFP off-resonance dark bands."""
    missing_slices: float = Field(0.10, ge=0.0, le=1.0)
    """Coverage truncated: basal or apical slices missing."""

    def as_dict(self) -> dict[str, float]:
        """Return ``{artefact name: probability}``."""
        return {name: float(getattr(self, name)) for name in ARTEFACT_NAMES}


def _check_range(name: str, lo: float, hi: float) -> None:
    if lo > hi:
        raise ValueError(f"{name}: lower bound {lo} exceeds upper bound {hi}")


class SynthConfig(BaseModel):
    """Knobs of :func:`cmrqc_shared.synth.render_study`.

    The defaults give a realistic mixed data set. ``clean=True`` switches every artefact
    off (noise, coil bias and partial-volume blur stay: they are part of any acquisition).
    ``forced_artefacts`` always applies the named artefacts (even when ``clean``), which is
    how tests and figures get an example of each.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_slices_range: tuple[int, int] = (8, 14)
    """Number of short-axis slices in the stack (inclusive)."""
    pixel_spacing_range_mm: tuple[float, float] = (1.2, 1.9)
    """In-plane pixel spacing (square pixels), mm."""
    slice_thickness_range_mm: tuple[float, float] = (6.0, 10.0)
    """Slice thickness, mm."""
    slice_gap_probability: float = Field(0.4, ge=0.0, le=1.0)
    """Probability that the stack has an inter-slice gap (otherwise spacing == thickness)."""
    slice_gap_range_mm: tuple[float, float] = (0.5, 2.0)
    """Gap between adjacent slices when there is one, mm."""
    matrix_range: tuple[int, int] = (160, 256)
    """Rows and columns of every image (inclusive); images may be non-square."""
    fov_range_mm: tuple[float, float] = (270.0, 400.0)
    """Target field of view along the longer image axis, mm (clipped by the matrix range)."""
    snr_range: tuple[float, float] = (8.0, 40.0)
    """Blood-pool signal divided by the Gaussian noise sigma of each channel (Rician)."""
    bias_strength_range: tuple[float, float] = (0.15, 0.6)
    """Strength of the smooth receive-coil bias field (0 = flat)."""
    kspace_fraction_range: tuple[float, float] = (0.55, 0.95)
    """Fraction of k-space acquired along phase encoding (the rest is zero-filled), which
    sets the acquisition resolution and the partial-volume blur / Gibbs ringing."""
    es_volume_ratio_range: tuple[float, float] = (0.35, 0.60)
    """Target ES / ED volume of the LV cavity (continuous model, before slice sampling)."""
    es_trigger_time_range_ms: tuple[float, float] = (300.0, 350.0)
    """Trigger time of the end-systolic phase, ms after the R wave (ED is 0 ms)."""
    max_pixel_value: int = Field(4095, ge=255, le=65535)
    """Largest stored pixel value (BitsStored is derived from it)."""
    artefacts: ArtefactProbabilities = ArtefactProbabilities()
    """Probability of each artefact."""
    clean: bool = False
    """No random artefacts at all (for reference sets)."""
    forced_artefacts: tuple[str, ...] = ()
    """Artefacts applied regardless of the probabilities, by name (see ``ARTEFACT_NAMES``)."""

    @model_validator(mode="after")
    def _validate(self) -> SynthConfig:
        _check_range("n_slices_range", *self.n_slices_range)
        _check_range("pixel_spacing_range_mm", *self.pixel_spacing_range_mm)
        _check_range("slice_thickness_range_mm", *self.slice_thickness_range_mm)
        _check_range("slice_gap_range_mm", *self.slice_gap_range_mm)
        _check_range("matrix_range", *self.matrix_range)
        _check_range("fov_range_mm", *self.fov_range_mm)
        _check_range("snr_range", *self.snr_range)
        _check_range("bias_strength_range", *self.bias_strength_range)
        _check_range("kspace_fraction_range", *self.kspace_fraction_range)
        _check_range("es_volume_ratio_range", *self.es_volume_ratio_range)
        _check_range("es_trigger_time_range_ms", *self.es_trigger_time_range_ms)
        if self.n_slices_range[0] < 3:
            raise ValueError("n_slices_range: need at least 3 slices")
        if self.matrix_range[0] < 64:
            raise ValueError("matrix_range: need at least 64 rows/columns")
        if self.pixel_spacing_range_mm[0] <= 0 or self.slice_thickness_range_mm[0] <= 0:
            raise ValueError("spacings and thicknesses must be positive")
        if self.slice_gap_range_mm[0] < 0:
            raise ValueError("slice_gap_range_mm: gaps must be >= 0")
        if not 0.0 < self.kspace_fraction_range[0] <= self.kspace_fraction_range[1] <= 1.0:
            raise ValueError("kspace_fraction_range must lie in (0, 1]")
        unknown = [a for a in self.forced_artefacts if a not in ARTEFACT_NAMES]
        if unknown:
            raise ValueError(f"unknown forced_artefacts {unknown}; known: {ARTEFACT_NAMES}")
        return self

    @classmethod
    def clean_config(cls) -> SynthConfig:
        """Defaults with every artefact switched off."""
        return cls(clean=True)

    def artefact_probability(self, name: str) -> float:
        """Effective probability of artefact ``name`` (1 if forced, 0 if clean)."""
        if name in self.forced_artefacts:
            return 1.0
        if self.clean:
            return 0.0
        return self.artefacts.as_dict()[name]

    def fingerprint(self) -> str:
        """Short stable hash of the configuration (mixed into the DICOM UIDs)."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]
