"""Tests of the synthetic short-axis cine generator: determinism, anatomy, geometry, artefacts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cmrqc_shared.synth import (
    ARTEFACT_NAMES,
    LABEL_LV,
    LABEL_MYO,
    LABEL_RV,
    SynthConfig,
    SyntheticStudy,
    plan_study,
    render_study,
)

CLEAN = SynthConfig.clean_config()
SEED = 11


def forced(*names: str) -> SynthConfig:
    return SynthConfig(clean=True, forced_artefacts=names)


@pytest.fixture(scope="module")
def clean_study() -> SyntheticStudy:
    return render_study(SEED, CLEAN)


def _lv_slices(labels: np.ndarray) -> np.ndarray:
    return np.flatnonzero((labels == LABEL_LV).any(axis=(1, 2)))


def _mid_slices(labels: np.ndarray) -> list[int]:
    """Slices in the middle third of the LV cavity's extent."""
    ks = _lv_slices(labels)
    n = len(ks)
    return [int(k) for k in ks[n // 3 : n - n // 3]] or [int(ks[n // 2])]


def test_same_seed_is_bit_identical(clean_study: SyntheticStudy) -> None:
    again = render_study(SEED, CLEAN)
    for a, b in zip(clean_study.phases, again.phases, strict=True):
        assert a.image.dtype == np.uint16 and a.labels.dtype == np.uint8
        assert np.array_equal(a.image, b.image)
        assert np.array_equal(a.labels, b.labels)
        assert np.array_equal(a.affine, b.affine)
        assert a.trigger_time_ms == b.trigger_time_ms
    assert clean_study.metadata() == again.metadata()


def test_different_seeds_differ(clean_study: SyntheticStudy) -> None:
    other = render_study(SEED + 1, CLEAN)
    assert other.geometry != clean_study.geometry
    assert other.anatomy != clean_study.anatomy
    assert not np.allclose(other.affine, clean_study.affine)


def test_artefacts_do_not_change_the_subject() -> None:
    base = plan_study(SEED, CLEAN)
    for name in ARTEFACT_NAMES:
        plan = plan_study(SEED, forced(name))
        assert plan.anatomy == base.anatomy
        assert plan.acquisition == base.acquisition
        if name not in ("wraparound", "missing_slices"):
            assert plan.geometry == base.geometry


def test_label_classes_and_shapes(clean_study: SyntheticStudy) -> None:
    geo = clean_study.geometry
    for phase in clean_study.phases:
        assert phase.image.shape == phase.labels.shape == geo.shape
        assert set(np.unique(phase.labels)) == {0, 1, 2, 3}
        # the heart stays inside the field of view
        lab = phase.labels > 0
        assert not lab[:, 0, :].any() and not lab[:, -1, :].any()
        assert not lab[:, :, 0].any() and not lab[:, :, -1].any()


@pytest.mark.parametrize("seed", [SEED, 3, 8])
def test_mid_slices_anatomy(seed: int, clean_study: SyntheticStudy) -> None:
    study = clean_study if seed == SEED else render_study(seed, CLEAN)
    cross = ndimage.generate_binary_structure(2, 1)
    for phase in study.phases:
        for k in _mid_slices(phase.labels):
            lab = phase.labels[k]
            lv, myo, rv = lab == LABEL_LV, lab == LABEL_MYO, lab == LABEL_RV
            # LV cavity is enclosed by myocardium: its neighbours are cavity or myocardium
            ring = ndimage.binary_dilation(lv, cross) & ~lv
            assert ring.any()
            assert np.all(myo[ring]), f"seed {seed} {phase.name} k={k}: cavity not enclosed"
            # one connected cavity (papillary muscles are labelled cavity)
            assert ndimage.label(lv)[1] == 1
            # RV touches the septum (myocardium) but never the LV cavity
            assert rv.any(), f"seed {seed} {phase.name} k={k}: no RV on a mid slice"
            rv_edge = ndimage.binary_dilation(rv, cross)
            assert (rv_edge & myo).any()
            assert not (rv_edge & lv).any()
            # RV lies on the image-left side of the LV (standard short-axis view)
            assert np.argwhere(rv)[:, 1].mean() < np.argwhere(lv)[:, 1].mean()


def test_blood_bright_myocardium_dark(clean_study: SyntheticStudy) -> None:
    ed = clean_study.phase("ED")
    k = _mid_slices(ed.labels)[0]
    img, lab = ed.image[k].astype(float), ed.labels[k]
    inner_lv = ndimage.binary_erosion(lab == LABEL_LV, iterations=2)
    inner_myo = ndimage.binary_erosion(lab == LABEL_MYO, iterations=1)
    assert inner_lv.any() and inner_myo.any()
    assert np.median(img[inner_lv]) > 2.0 * np.median(img[inner_myo])
    assert np.median(img[ndimage.binary_erosion(lab == LABEL_RV)]) > 2.0 * np.median(img[inner_myo])


@pytest.mark.parametrize("seed", [SEED, 4, 5, 6])
def test_end_systole_is_smaller(seed: int, clean_study: SyntheticStudy) -> None:
    study = clean_study if seed == SEED else render_study(seed, CLEAN)
    ed, es = study.phase("ED").volumes_ml(), study.phase("ES").volumes_ml()
    ratio = es["lv_cavity"] / ed["lv_cavity"]
    assert 0.25 < ratio < 0.75, ratio
    assert es["rv_cavity"] < ed["rv_cavity"]
    # myocardium is (nearly) incompressible
    assert abs(es["lv_myocardium"] / ed["lv_myocardium"] - 1.0) < 0.2
    assert 40.0 < ed["lv_cavity"] < 300.0
    # thicker wall at ES: more myocardium per cavity
    assert es["lv_myocardium"] / es["lv_cavity"] > ed["lv_myocardium"] / ed["lv_cavity"]
    assert study.phase("ED").trigger_time_ms == 0.0
    assert 300.0 <= study.phase("ES").trigger_time_ms <= 350.0


def test_apex_is_closed_and_tapers() -> None:
    fine = SynthConfig(
        clean=True,
        n_slices_range=(40, 70),
        slice_thickness_range_mm=(2.0, 2.0),
        slice_gap_probability=0.0,
    )
    study = render_study(SEED, fine, phases=("ED",))
    lab = study.phase("ED").labels
    myo_k = np.flatnonzero((lab == LABEL_MYO).any(axis=(1, 2)))
    lv_area = (lab == LABEL_LV).sum(axis=(1, 2))
    apex = int(myo_k.min())  # k = 0 is the apical end of the stack
    # myocardium caps the cavity: the most apical myocardial slices have no cavity
    assert lv_area[apex] == 0 and lv_area[apex + 1] == 0
    first_cavity = int(np.flatnonzero(lv_area)[0])
    assert first_cavity > apex
    # the cavity widens from the apex towards the mid-ventricle
    mid = first_cavity + (int(np.flatnonzero(lv_area)[-1]) - first_cavity) // 2
    assert lv_area[first_cavity] < 0.3 * lv_area[mid]
    assert lv_area[first_cavity + 2] < lv_area[mid]


def test_geometry_ranges_over_many_seeds() -> None:
    cfg = SynthConfig()
    tilts, normals, positions = [], [], []
    for seed in range(30):
        plan = plan_study(seed, cfg)
        g = plan.geometry
        assert 8 <= g.n_slices <= 14
        assert 1.2 <= g.pixel_spacing_mm[0] <= 1.9
        assert g.pixel_spacing_mm[0] == g.pixel_spacing_mm[1]
        assert 6.0 <= g.slice_thickness_mm <= 10.0
        assert g.slice_thickness_mm <= g.slice_spacing_mm <= g.slice_thickness_mm + 2.0 + 1e-9
        assert 160 <= g.rows <= 256 and 160 <= g.cols <= 256
        row, col = np.asarray(g.row_cosine), np.asarray(g.col_cosine)
        assert abs(np.linalg.norm(row) - 1) < 1e-12 and abs(np.linalg.norm(col) - 1) < 1e-12
        assert abs(row @ col) < 1e-12
        n = g.slice_normal
        # oblique short axis: the normal points (anti)parallel to the LV long axis
        heart_axis = plan.anatomy.heart_rotation()[:, 2]
        assert n @ heart_axis < -0.99
        assert np.max(np.abs(n)) < 0.95
        # the long axis runs left, anterior and inferior from base to apex (LPS)
        assert heart_axis[0] > 0.3 and heart_axis[1] < -0.2 and heart_axis[2] < -0.2
        # the affine follows the documented formula
        aff = g.affine
        k = g.n_slices - 1
        p = g.voxel_to_patient(np.array([3.0, 5.0, k]))
        expected = (
            np.asarray(g.origin_mm)
            + 3.0 * g.pixel_spacing_mm[1] * row
            + 5.0 * g.pixel_spacing_mm[0] * col
            + k * g.slice_spacing_mm * n
        )
        assert np.allclose(p, expected, atol=1e-9)
        assert np.allclose(aff[:3, 3], g.origin_mm)
        assert 300.0 <= plan.acquisition.es_trigger_time_ms <= 350.0
        tilts.append(g.planning_tilt_deg)
        normals.append(n)
        positions.append(g.origin_mm)
    assert np.std(np.asarray(normals), axis=0).max() > 0.05  # orientation varies per subject
    assert np.std(np.asarray(positions), axis=0).max() > 10.0


def test_artefact_selection() -> None:
    for seed in range(30):
        assert plan_study(seed, CLEAN).artefacts == ()
    seen = set()
    for seed in range(60):
        seen |= {a.name for a in plan_study(seed).artefacts}
    assert seen == set(ARTEFACT_NAMES)
    for name in ARTEFACT_NAMES:
        plan = plan_study(5, forced(name))
        assert [a.name for a in plan.artefacts] == [name]
        assert plan.artefacts[0].params
    with pytest.raises(ValueError):
        SynthConfig(forced_artefacts=("not_an_artefact",))


def test_misalignment_shifts_image_and_labels(clean_study: SyntheticStudy) -> None:
    moved = render_study(SEED, forced("misalignment"), phases=("ED",))
    assert moved.geometry == clean_study.geometry
    shifts = moved.artefacts[0].params["shifts_mm"]
    px = moved.geometry.pixel_spacing_mm[0]
    ref, lab = clean_study.phase("ED").labels, moved.phase("ED").labels
    n_checked = 0
    for k, (du, dv) in enumerate(shifts):
        if not (ref[k] == LABEL_LV).any():
            continue
        c_ref = np.argwhere(ref[k] > 0).mean(axis=0)
        c_mov = np.argwhere(lab[k] > 0).mean(axis=0)
        # centroid (row, col) moves by (dv, du) / pixel size
        assert np.allclose(c_mov - c_ref, [dv / px, du / px], atol=0.6), k
        n_checked += du != 0.0 or dv != 0.0
    assert n_checked >= 1


@pytest.mark.parametrize("name", ["ghosting", "banding"])
def test_image_artefacts_keep_labels(name: str, clean_study: SyntheticStudy) -> None:
    study = render_study(SEED, forced(name), phases=("ED",))
    ref = clean_study.phase("ED")
    assert np.array_equal(study.phase("ED").labels, ref.labels)
    diff = np.abs(study.phase("ED").image.astype(float) - ref.image.astype(float))
    assert diff.mean() > 5.0


def test_wraparound_folds_the_body() -> None:
    study = render_study(SEED, forced("wraparound"), phases=("ED",))
    params = study.artefacts[0].params
    assert params["fov_pe_mm"] < params["body_extent_pe_mm"]
    assert params["rendered_beyond_fov_px"] > 0
    lab = study.phase("ED").labels
    assert (lab == LABEL_LV).any()


@pytest.mark.parametrize("seed", [2, 9])
def test_missing_slices_truncate_coverage(seed: int) -> None:
    study = render_study(seed, forced("missing_slices"), phases=("ED",))
    params = study.artefacts[0].params
    lab = study.phase("ED").labels
    assert study.geometry.n_slices >= 8
    if params["end"] == "base":
        # the most basal slice (k = n-1) already cuts through the LV ring
        assert (lab[-1] == LABEL_MYO).any() and (lab[-1] == LABEL_LV).any()
    else:
        # the most apical slice (k = 0) still shows the cavity
        assert (lab[0] == LABEL_LV).any()


def test_render_is_reasonably_fast(clean_study: SyntheticStudy) -> None:
    assert clean_study.timings_s["total_s"] < 5.0
