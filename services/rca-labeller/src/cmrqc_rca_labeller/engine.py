"""The batched, multi-resolution registration engine (torch; CPU, or a GPU when present).

One test image is registered to many references at once: references × slices form the batch
of every ``grid_sample`` call, so K references cost one large tensor operation per iteration
instead of K small ones. The steps, all driven by image intensities (the test image's
segmentation is only carried along, never used to place anything):

1. **Pose search** (closed form, no gradients): a heart template — the mean of the references,
   each turned to a canonical pose (LV→RV along +x, whole-heart centroid at the origin) and
   locally normalised — is cross-correlated with the whole test stack by FFT over every
   in-plane translation, ``search_angles`` in-plane rotations and every half-slice position of
   the heart centre along the stack. This gives the test heart's centre, rotation and level,
   whence each reference's initial transform (its own canonical pose composed with the
   test's).
2. **Screening**: every reference is scored by weighted NCC at its initial transform
   (over a few scales); the best ``screen_keep`` go on.
3. **Coarse affine** (``2·grid_mm``): per reference, a 2D affine in-plane plus a scale and an
   offset along the long axis, by Adam on weighted NCC (the weight is the reference's
   dilated heart: verified labels may steer *where* similarity counts on the reference side).
   The best ``refine_keep`` references by NCC go on.
4. **Fine** (``grid_mm``): the affine again plus a translation per slice (breath-hold
   misalignment), then a coarse free-form deformation per slice (a ``ffd_control²`` grid of
   control displacements, bicubic, with a smoothness penalty).
5. **Propagation and scoring**: the test segmentation's class fractions are warped onto each
   reference field, arg-maxed, and compared with the verified labels (Dice per class, on the
   reference slices that the test stack covers). Parts of the segmentation that the transform
   maps outside the reference's field count as false positives, and the reference's image
   outside the field as agreed background, so the score means what Dice on the full image
   would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from cmrqc_rca_labeller.prepare import (
    PreparedReference,
    PreparedTest,
    field_offsets,
    rotation,
)
from cmrqc_shared.metrics import EMPTY_PAIR_DICE

CLASS_NAMES = ("BG", "LV", "LVM", "RVC", "WH")


@dataclass(frozen=True)
class EngineConfig:
    """Knobs of the engine; the defaults are the measured speed/accuracy trade-off.

    Attributes:
        search_angles: in-plane rotations tried by the pose search (evenly over 360°).
        pose_grid_mm: pixel size of the pose search (a multiple of ``2·grid_mm``).
        fine_window_px: side of the heart-centred window the fine stages optimise on
            (the scoring uses the whole field).
        template_radius_mm: radius of the template's circular window.
        screen_scales: isotropic scales tried for every reference at screening.
        screen_keep: references kept after screening (all if larger than the set).
        refine_keep: references kept after the coarse affine for the fine stages.
        coarse_iterations: Adam steps of the coarse affine.
        fine_iterations: Adam steps of the fine affine + per-slice translation.
        ffd_iterations: Adam steps of the free-form deformation.
        ffd_control: control points per side of the deformation grid.
        ffd_smoothness: weight of the squared control-point differences (per mm²).
        heart_margin_mm: dilation of the reference heart for the similarity weight.
        lr_matrix: Adam step of the affine matrix entries and the long-axis scale.
        lr_mm: Adam step of the translations, mm.
        lr_ffd_mm: Adam step of the B-spline control displacements, mm.
        score_keep: of the references through the fine stages, how many of the best
            registered (image similarity after the last stage) the estimate is taken over;
            0 takes all. The poorest registrations give the least reliable Dice: leaving them
            out raised the pass/fail accuracy on QC_VAL and on 240 fresh QC_TEST cases
            (``services/rca-labeller/README.md``).
        top_k: how many best references the top-k mean averages.
        device: torch device; ``None`` picks CUDA when available.
    """

    search_angles: int = 24
    pose_grid_mm: float = 8.0
    fine_window_px: int = 64
    template_radius_mm: float = 64.0
    screen_scales: tuple[float, ...] = (0.85, 1.0, 1.15)
    screen_keep: int = 30
    refine_keep: int = 12
    coarse_iterations: int = 20
    fine_iterations: int = 15
    ffd_iterations: int = 30
    ffd_control: int = 9
    ffd_smoothness: float = 0.02
    heart_margin_mm: float = 12.0
    lr_matrix: float = 0.01
    lr_mm: float = 1.0
    lr_ffd_mm: float = 0.6
    score_keep: int = 8
    top_k: int = 3
    device: str | None = None

    def torch_device(self) -> torch.device:
        if self.device is not None:
            return torch.device(self.device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Pose(NamedTuple):
    """Where the pose search found the heart in the test stack (canonical frame)."""

    angle_rad: float
    centre_x_mm: float
    centre_y_mm: float
    centre_z_mm: float
    score: float


def gaussian_blur(stack: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian blur of every slice of ``[n, rows, cols]`` (edges replicated)."""
    radius = max(1, int(3 * sigma_px))
    taps = torch.arange(-radius, radius + 1, dtype=stack.dtype, device=stack.device)
    kernel = torch.exp(-0.5 * (taps / sigma_px) ** 2)
    kernel = kernel / kernel.sum()
    x = stack[:, None]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return x[:, 0]


def _local_normalise(stack: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """(I − local mean) / local std, per slice of ``[n, rows, cols]`` (Gaussian window)."""
    mean = gaussian_blur(stack, sigma_px)
    centred = stack - mean
    std = gaussian_blur(centred**2, sigma_px).clamp_min(0).sqrt()
    return centred / (std + 0.05 * std.mean() + 1e-6)


@dataclass(frozen=True)
class FixedSide:
    """The reference side of the weighted NCC, per plane, computed once.

    ``weighted_centred`` = w·(f − mean_w f); ``total`` = Σ w; ``variance`` = Σ w (f − mean)².
    """

    weight: torch.Tensor  # [P, s, s]
    weighted_centred: torch.Tensor
    total: torch.Tensor  # [P]
    variance: torch.Tensor  # [P]

    @classmethod
    def of(cls, fixed: torch.Tensor, weight: torch.Tensor) -> FixedSide:
        dims = (-2, -1)
        total = weight.sum(dims).clamp_min(1e-6)
        centred = fixed - ((weight * fixed).sum(dims) / total)[..., None, None]
        return cls(
            weight=weight,
            weighted_centred=weight * centred,
            total=total,
            variance=(weight * centred * centred).sum(dims),
        )

    def ncc(self, moving: torch.Tensor) -> torch.Tensor:
        """Weighted NCC of every plane ``[P]`` in [-1, 1] (moving: ``[P, s, s]``)."""
        dims = (-2, -1)
        weighted = self.weight * moving
        mean = weighted.sum(dims) / self.total
        variance = (weighted * moving).sum(dims) - mean * mean * self.total
        cov = (self.weighted_centred * moving).sum(dims)
        return cov / torch.sqrt(variance.clamp_min(0) * self.variance + 1e-8)

    def image_plane(self, index: int) -> torch.Tensor:
        """Plane ``index`` of the image, up to an offset (for figures)."""
        return self.weighted_centred[index] / self.weight[index]

    def take(self, index: torch.Tensor) -> FixedSide:
        return FixedSide(*(t.index_select(0, index) for t in vars(self).values()))


@dataclass
class ReferenceBank:
    """Every prepared reference as packed planes (references × their own slices), plus the
    heart template.

    Plane tensors are ``[P, …]`` with ``P`` the total number of reference slices, so no
    computation is spent on padding; ``plane_ref`` says which reference each plane belongs
    to. Build it once per reference set (``ReferenceBank.build``); it is read-only afterwards
    and serves any number of test images.
    """

    ids: list[str]
    labels: torch.Tensor  # [P, F, F] uint8
    fine: FixedSide  # image [P, W, W] (the central window) with its weight
    coarse: FixedSide  # [P, F/2, F/2]
    z_rel: torch.Tensor  # [P] mm
    plane_ref: torch.Tensor  # [P] reference index
    first_plane: torch.Tensor  # [K]
    plane_count: torch.Tensor  # [K]
    z_first: torch.Tensor  # [K] first slice centre, mm (relative)
    z_last: torch.Tensor  # [K]
    slice_spacing: torch.Tensor  # [K]
    angle: torch.Tensor  # [K]
    outside_px: torch.Tensor  # [K]
    template: torch.Tensor  # [Zt, Ft, Ft] canonical, at template_mm
    template_z0: float  # z_rel of the first template plane, mm
    template_dz: float
    template_mm: float
    grid_mm: float
    field_px: int
    window_px: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def size(self) -> int:
        return len(self.ids)

    @classmethod
    def build(
        cls, references: list[PreparedReference], config: EngineConfig | None = None
    ) -> ReferenceBank:
        """Pack ``references`` (all on the same field grid) and build the template.

        Raises:
            ValueError: no references, or references on different field grids.
        """
        config = config or EngineConfig()
        if not references:
            raise ValueError("a reference bank needs at least one reference")
        field_px = references[0].image.shape[-1]
        grid_mm = references[0].grid_mm
        if any(r.image.shape[-1] != field_px or r.grid_mm != grid_mm for r in references):
            raise ValueError("references must share one field grid")
        if field_px % 2:
            raise ValueError("the field must have an even number of pixels per side")
        margin_px = max(1, round(config.heart_margin_mm / grid_mm))
        disk = ndimage.iterate_structure(ndimage.generate_binary_structure(2, 1), margin_px)
        weights = []
        for ref in references:
            region = np.stack([ndimage.binary_dilation(h, disk) for h in ref.labels > 0])
            soft = ndimage.gaussian_filter(region.astype(np.float32), sigma=(0, 2, 2))
            weights.append(0.1 + soft)
        image = torch.from_numpy(np.concatenate([r.image for r in references]))
        weight = torch.from_numpy(np.concatenate(weights))
        counts = torch.tensor([r.image.shape[0] for r in references])
        half = field_px // 2
        window = min(field_px, config.fine_window_px)
        lo = (field_px - window) // 2
        inner = (slice(None), slice(lo, lo + window), slice(lo, lo + window))
        bank = cls(
            ids=[r.reference_id for r in references],
            labels=torch.from_numpy(np.concatenate([r.labels for r in references])),
            fine=FixedSide.of(image[inner].contiguous(), weight[inner].contiguous()),
            coarse=FixedSide.of(
                F.avg_pool2d(image[:, None], 2)[:, 0], F.avg_pool2d(weight[:, None], 2)[:, 0]
            ),
            z_rel=torch.from_numpy(np.concatenate([r.z_rel_mm for r in references])),
            plane_ref=torch.repeat_interleave(torch.arange(len(references)), counts),
            first_plane=torch.cumsum(counts, 0) - counts,
            plane_count=counts,
            z_first=torch.tensor([float(r.z_rel_mm[0]) for r in references]),
            z_last=torch.tensor([float(r.z_rel_mm[-1]) for r in references]),
            slice_spacing=torch.tensor([r.slice_spacing_mm for r in references]),
            angle=torch.tensor([r.angle_rad for r in references]),
            outside_px=torch.tensor([r.outside_px for r in references]),
            template=torch.zeros(1),
            template_z0=0.0,
            template_dz=1.0,
            template_mm=2 * grid_mm,
            grid_mm=grid_mm,
            field_px=field_px,
            window_px=window,
        )
        bank._build_template(config, F.avg_pool2d(image[:, None], 2)[:, 0].view(-1, half, half))
        return bank.to(config.torch_device())

    def to(self, device: torch.device) -> ReferenceBank:
        """Move every tensor to ``device`` (in place); returns self."""
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device))
            elif isinstance(value, FixedSide):
                setattr(self, name, FixedSide(*(t.to(device) for t in vars(value).values())))
        self.device = device
        return self

    def plane_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """The plane indices of the references at ``indices``, in that order."""
        counts = self.plane_count[indices]
        starts = self.first_plane[indices]
        offsets = torch.arange(int(counts.sum()), device=self.device) - torch.repeat_interleave(
            torch.cumsum(counts, 0) - counts, counts
        )
        return torch.repeat_interleave(starts, counts) + offsets

    def subset(self, indices: torch.Tensor) -> ReferenceBank:
        """A bank of the references at ``indices`` (same template)."""
        indices = indices.to(self.device)
        planes = self.plane_indices(indices)
        counts = self.plane_count[indices]
        return ReferenceBank(
            ids=[self.ids[int(i)] for i in indices],
            labels=self.labels.index_select(0, planes),
            fine=self.fine.take(planes),
            coarse=self.coarse.take(planes),
            z_rel=self.z_rel.index_select(0, planes),
            plane_ref=torch.repeat_interleave(
                torch.arange(len(indices), device=self.device), counts
            ),
            first_plane=torch.cumsum(counts, 0) - counts,
            plane_count=counts,
            z_first=self.z_first[indices],
            z_last=self.z_last[indices],
            slice_spacing=self.slice_spacing[indices],
            angle=self.angle[indices],
            outside_px=self.outside_px[indices],
            template=self.template,
            template_z0=self.template_z0,
            template_dz=self.template_dz,
            template_mm=self.template_mm,
            grid_mm=self.grid_mm,
            field_px=self.field_px,
            window_px=self.window_px,
            device=self.device,
        )

    def per_reference_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean over each reference's planes of a per-plane quantity ``[P]`` → ``[K]``."""
        total = torch.zeros(self.size, dtype=values.dtype, device=values.device)
        return total.index_add(0, self.plane_ref, values) / self.plane_count.to(values.dtype)

    def per_reference_sum(self, values: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(self.size, dtype=values.dtype, device=values.device)
        return total.index_add(0, self.plane_ref, values)

    def _build_template(self, config: EngineConfig, coarse_image: torch.Tensor) -> None:
        """Mean canonical-pose, locally normalised reference image (coarse grid)."""
        coarse_mm = 2 * self.grid_mm
        side = self.field_px // 2
        normalised = _local_normalise(coarse_image, 3.0)
        dz = float(self.slice_spacing.mean()) / 2
        planes = torch.arange(float(self.z_first.min()), float(self.z_last.max()) + dz / 2, dz)
        offsets = torch.from_numpy(field_offsets(side, coarse_mm)).float()
        yy, xx = torch.meshgrid(offsets, offsets, indexing="ij")
        canonical = torch.stack([xx, yy], -1)  # [s, s, 2]
        half = side * coarse_mm / 2
        total = torch.zeros(len(planes), side, side)
        cover = torch.zeros(len(planes), 1, 1)
        for n in range(self.size):
            points = canonical @ rotation(self.angle[n]).T  # q = R(φ) q̃
            z_index = (planes - self.z_first[n]) / self.slice_spacing[n]  # fractional slice
            slices = int(self.plane_count[n])
            start = int(self.first_plane[n])
            z_norm = 2 * (z_index + 0.5) / slices - 1
            grid = torch.cat(
                [
                    (points / half)[None].expand(len(planes), -1, -1, -1),
                    z_norm.view(-1, 1, 1, 1).expand(-1, side, side, 1),
                ],
                -1,
            )
            sampled = F.grid_sample(
                normalised[start : start + slices][None, None],
                grid[None],
                mode="bilinear",
                padding_mode="zeros",
                align_corners=False,
            )[0, 0]
            inside = ((z_index >= -0.5) & (z_index <= slices - 0.5)).float().view(-1, 1, 1)
            total += sampled * inside
            cover += inside
        template = total / cover.clamp_min(1)
        radius = torch.sqrt(xx**2 + yy**2)
        window = torch.clamp((config.template_radius_mm - radius) / 8.0, 0, 1)
        template = template * window
        mean = (template * window).sum((1, 2), keepdim=True) / window.sum()
        template = (template - mean) * window
        factor = max(1, round(config.pose_grid_mm / coarse_mm))
        if factor > 1:
            template = F.avg_pool2d(template[:, None], factor)[:, 0]
        norm = template.flatten(1).norm(dim=1).clamp_min(1e-6).view(-1, 1, 1)
        self.template = template / norm * (cover / self.size).sqrt()
        self.template_z0 = float(planes[0])
        self.template_dz = dz
        self.template_mm = coarse_mm * factor


def find_pose(test: PreparedTest, bank: ReferenceBank, config: EngineConfig) -> Pose:
    """Locate the heart in the test stack by FFT template matching (see the module doc).

    The score of a pose is Σ_k ⟨template(z_k − c), test slice k shifted by τ⟩ over the test
    slices k, for the heart centre c at every half-slice position and every translation τ:
    a 3D cross-correlation between the test stack (placed on a half-slice grid, zeros between
    its slices) and the template sampled every half slice, done by one 3D FFT per angle.
    """
    device = bank.device
    factor = max(1, round(bank.template_mm / (2 * bank.grid_mm)))
    stack = test.coarse[0, 0].to(device)
    normalised = _local_normalise(stack, 3.0)
    if factor > 1:
        normalised = F.avg_pool2d(normalised[:, None], factor)[:, 0]
    slices, rows, cols = normalised.shape
    dy, dx = (s * factor for s in test.coarse_spacing_mm)
    dz = test.slice_spacing_mm
    side = bank.template.shape[-1]
    size = int(math.ceil((max(rows, cols) + side) / 16) * 16)

    # test slice k sits at half-slice index n = 2k + 1; centre candidates c_j = j·dz/2
    centres = torch.arange(1, 2 * slices, device=device)
    upsampled = torch.zeros(2 * slices + 1, rows, cols, device=device)
    upsampled[1::2] = normalised
    m_first, m_last = 1 - (2 * slices - 1), 2 * (slices - 1) + 1 - 1  # ζ = m·dz/2 needed
    zeta = torch.arange(m_first, m_last + 1, device=device).float() * dz / 2
    length = int(math.ceil((len(upsampled) + len(zeta)) / 8) * 8)
    spectrum = torch.fft.rfftn(upsampled, s=(length, size, size))

    offsets_x = (torch.arange(side, device=device) + 0.5 - side / 2) * dx
    offsets_y = (torch.arange(side, device=device) + 0.5 - side / 2) * dy
    yy, xx = torch.meshgrid(offsets_y, offsets_x, indexing="ij")
    local = torch.stack([xx, yy], -1)  # test-frame offsets of the template pixels, mm
    half = side * bank.template_mm / 2
    depth = bank.template.shape[0]
    z_norm = 2 * ((zeta - bank.template_z0) / bank.template_dz + 0.5) / depth - 1
    z_inside = ((z_norm >= -1) & (z_norm <= 1)).float()
    template = bank.template[None, None]

    # shift τ (circular index, negative beyond size − side) puts the template centre at
    # (τ + side/2) pixels; keep the shifts whose centre lies inside the field of view
    shifts = torch.arange(size, device=device)
    shifts = torch.where(shifts >= size - side, shifts - size, shifts).float() + side / 2
    valid = (
        ((shifts >= 0) & (shifts < rows))[:, None] & ((shifts >= 0) & (shifts < cols))[None, :]
    ).float()
    # R[j] = C[j + m_first] (circular correlation index of centre j)
    rows_of_centres = (centres + m_first) % length
    best = Pose(0.0, cols * dx / 2, rows * dy / 2, slices * dz / 2, -math.inf)
    for step in range(config.search_angles):
        angle = 2 * math.pi * step / config.search_angles
        canonical = local @ rotation(torch.tensor(-angle, device=device)).T  # q̃ = R(−θ) x'
        grid = torch.cat(
            [
                (canonical / half)[None].expand(len(zeta), -1, -1, -1),
                z_norm.view(-1, 1, 1, 1).expand(-1, side, side, 1),
            ],
            -1,
        )
        planes = F.grid_sample(
            template, grid[None], mode="bilinear", padding_mode="zeros", align_corners=False
        )[0, 0] * z_inside.view(-1, 1, 1)
        correlation = torch.fft.irfftn(
            spectrum * torch.fft.rfftn(planes, s=(length, size, size)).conj(),
            s=(length, size, size),
        )
        response = correlation[rows_of_centres] * valid - (1 - valid) * 1e9  # [J, P, P]
        score, flat = response.flatten().max(0)
        if float(score) > best.score:
            j, rest = divmod(int(flat), size * size)
            py, px = divmod(rest, size)
            best = Pose(
                angle_rad=angle,
                centre_x_mm=float(shifts[px]) * dx,
                centre_y_mm=float(shifts[py]) * dy,
                centre_z_mm=float(centres[j]) * dz / 2,
                score=float(score),
            )
    return best


@dataclass
class Transforms:
    """Per-reference transforms from reference field mm to test mm (canonical frames).

    In-plane ``x_test = A q + u + d[p] + D[p](q)`` for plane p of a reference, along the
    long axis ``z_test = s · z_rel + w``; ``d`` and ``D`` (B-spline control displacements)
    are per plane.
    """

    matrix: torch.Tensor  # A [M, 2, 2]
    shift: torch.Tensor  # u [M, 2]
    z_scale: torch.Tensor  # s [M]
    z_shift: torch.Tensor  # w [M]
    slice_shift: torch.Tensor  # d [P, 2]
    control: torch.Tensor | None = None  # [P, 2, c, c] mm

    def select(self, indices: torch.Tensor, planes: torch.Tensor) -> Transforms:
        """The transforms of references ``indices`` whose planes are ``planes``."""
        return Transforms(
            self.matrix[indices],
            self.shift[indices],
            self.z_scale[indices],
            self.z_shift[indices],
            self.slice_shift[planes],
            None if self.control is None else self.control[planes],
        )

    def detached(self) -> Transforms:
        """A copy cut from any autograd graph."""
        return Transforms(
            matrix=self.matrix.detach().clone(),
            shift=self.shift.detach().clone(),
            z_scale=self.z_scale.detach().clone(),
            z_shift=self.z_shift.detach().clone(),
            slice_shift=self.slice_shift.detach().clone(),
            control=None if self.control is None else self.control.detach().clone(),
        )


def initial_transforms(
    bank: ReferenceBank, pose: Pose, scale: torch.Tensor | float = 1.0
) -> Transforms:
    """Each reference's canonical pose composed with the test's, at an isotropic ``scale``
    (one value, or one per reference)."""
    device = bank.device
    count = bank.size
    scales = torch.as_tensor(scale, dtype=torch.float32, device=device).expand(count)
    angle = torch.tensor(pose.angle_rad, device=device) - bank.angle
    return Transforms(
        matrix=rotation(angle) * scales.view(-1, 1, 1),
        shift=torch.tensor([pose.centre_x_mm, pose.centre_y_mm], device=device).expand(count, 2),
        z_scale=scales.clone(),
        z_shift=torch.full((count,), pose.centre_z_mm, device=device),
        slice_shift=torch.zeros(len(bank.z_rel), 2, device=device),
    )


def _cubic_bspline(t: torch.Tensor) -> torch.Tensor:
    a = t.abs()
    return torch.where(
        a < 1,
        (4 - 6 * a**2 + 3 * a**3) / 6,
        torch.where(a < 2, (2 - a) ** 3 / 6, torch.zeros_like(a)),
    )


_BASIS_CACHE: dict[tuple[int, float, int, float, str], torch.Tensor] = {}


def bspline_basis(
    side: int, spacing_mm: float, control: int, extent_mm: float, device: torch.device
) -> torch.Tensor:
    """Cubic B-spline basis ``[side, control]`` at the pixel centres of a centred grid.

    The ``control`` knots are spaced ``h = extent_mm / (control − 3)`` apart over a centred
    span of ``extent_mm`` with one knot beyond each end, so the same control grid can be
    evaluated on any pixel grid (outside the span the deformation fades to zero).

    Raises:
        ValueError: fewer than 4 control points.
    """
    if control < 4:
        raise ValueError("a cubic B-spline grid needs at least 4 control points per side")
    key = (side, spacing_mm, control, extent_mm, str(device))
    if key not in _BASIS_CACHE:
        spacing = extent_mm / (control - 3)
        pixels = torch.from_numpy(field_offsets(side, spacing_mm)).float()
        knots = (torch.arange(control, dtype=torch.float32) - 1) * spacing - extent_mm / 2
        basis = _cubic_bspline((pixels[:, None] - knots[None, :]) / spacing)
        _BASIS_CACHE[key] = basis.to(device)
    return _BASIS_CACHE[key]


@dataclass
class _Planes:
    """Where every reference field pixel lands in the test: in-plane normalised coordinates
    ``grid [P, s, s, 2]`` and the fractional test slice index ``z_index [P]``."""

    grid: torch.Tensor
    z_index: torch.Tensor


def _plane_coordinates(
    bank: ReferenceBank, transforms: Transforms, level: str, test: PreparedTest
) -> _Planes:
    """``level``: ``coarse`` (whole field, 2·grid), ``fine`` (window, grid) or ``field``."""
    device = bank.device
    side, spacing = {
        "coarse": (bank.field_px // 2, 2 * bank.grid_mm),
        "fine": (bank.window_px, bank.grid_mm),
        "field": (bank.field_px, bank.grid_mm),
    }[level]
    offsets = torch.from_numpy(field_offsets(side, spacing)).float().to(device)
    _, extent_y, extent_x = test.extent_mm
    to_unit = torch.tensor([2 / extent_x, 2 / extent_y], device=device)
    # normalised units throughout, and one full-size operation: x·A[:, 0] + (y·A[:, 1] + o)
    matrix = (transforms.matrix * to_unit.view(1, 2, 1))[bank.plane_ref]  # [P, 2, 2]
    offset = (transforms.shift[bank.plane_ref] + transforms.slice_shift) * to_unit - 1  # [P, 2]
    along_x = offsets.view(1, side, 1) * matrix[:, None, :, 0]  # [P, s, 2]
    along_y = offsets.view(1, side, 1) * matrix[:, None, :, 1] + offset[:, None, :]
    grid = along_y[:, :, None, :] + along_x[:, None, :, :]  # [P, s(y), s(x), 2]
    if transforms.control is not None:
        basis = bspline_basis(
            side, spacing, transforms.control.shape[-1], bank.window_px * bank.grid_mm, device
        )  # [s, c]
        displacement = basis @ transforms.control @ basis.T  # [P, 2, s, s] mm
        grid = grid + displacement.permute(0, 2, 3, 1) * to_unit
    z = transforms.z_scale[bank.plane_ref] * bank.z_rel + transforms.z_shift[bank.plane_ref]
    return _Planes(grid=grid, z_index=z / test.slice_spacing_mm - 0.5)


class _SliceSampler:
    """Samples a test stack ``[C, k, rows, cols]`` on reference planes.

    Each plane is a blend of the two test slices around its (fractional) slice index, so the
    gradient reaches the long-axis parameters through the blend weight, while the sampling
    itself is 2D (several times cheaper than 3D ``grid_sample``, backward included). The
    gathered slice pairs are cached while the slice indices do not change.
    """

    def __init__(self, volume: torch.Tensor) -> None:
        self.slices = volume.permute(1, 0, 2, 3).contiguous()  # [k, C, rows, cols]
        self.channels = volume.shape[0]
        self._key: torch.Tensor | None = None
        self._pairs: torch.Tensor | None = None

    def __call__(self, planes: _Planes) -> torch.Tensor:
        count = self.slices.shape[0]
        index = planes.z_index.clamp(0, count - 1)
        lower = index.detach().floor().long().clamp(max=max(count - 2, 0))
        alpha = (index - lower.float()).clamp(0, 1)
        upper = (lower + 1).clamp(max=count - 1)
        if self._pairs is None or self._key is None or len(self._key) != len(lower):
            self._pairs = torch.cat([self.slices[lower], self.slices[upper]], 1)
        else:  # re-gather only the planes that moved to another pair of slices
            moved = torch.nonzero(lower != self._key).squeeze(1)
            if len(moved):
                self._pairs[moved] = torch.cat(
                    [self.slices[lower[moved]], self.slices[upper[moved]]], 1
                )
        self._key = lower
        out = F.grid_sample(
            self._pairs, planes.grid, mode="bilinear", padding_mode="border", align_corners=False
        )  # [P, 2C, s, s]
        if self.channels == 1:  # a weighted sum: its backward needs no full-size zeros
            weights = torch.stack([1 - alpha, alpha], 1).view(-1, 2, 1, 1)
            return (out * weights).sum(1, keepdim=True)
        a = alpha.view(-1, 1, 1, 1)
        return torch.lerp(out[:, : self.channels], out[:, self.channels :], a)


def similarity(
    bank: ReferenceBank,
    transforms: Transforms,
    test: PreparedTest,
    coarse: bool,
    sampler: _SliceSampler | None = None,
) -> torch.Tensor:
    """Mean weighted NCC ``[M]`` over each reference's planes, test sampled through the
    transforms."""
    if sampler is None:
        sampler = _SliceSampler((test.coarse if coarse else test.fine)[0].to(bank.device))
    fixed = bank.coarse if coarse else bank.fine
    level = "coarse" if coarse else "fine"
    moving = sampler(_plane_coordinates(bank, transforms, level, test))[:, 0]
    return bank.per_reference_mean(fixed.ncc(moving))


class _Adam:
    """Adam (Kingma & Ba) over a few tensors, each with its own step size.

    Written out because ``torch.optim`` imports ``torch._dynamo`` on first use, which costs
    seconds per process — more than a whole RCA case.
    """

    def __init__(
        self, groups: list[tuple[torch.Tensor, float]], betas: tuple[float, float] = (0.9, 0.999)
    ) -> None:
        self.groups = groups
        self.betas = betas
        self.moments = [(torch.zeros_like(t), torch.zeros_like(t)) for t, _ in groups]
        self.steps = 0

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        beta1, beta2 = self.betas
        correction1 = 1 - beta1**self.steps
        correction2 = 1 - beta2**self.steps
        for (tensor, lr), (first, second) in zip(self.groups, self.moments, strict=True):
            if tensor.grad is None:
                continue
            grad = tensor.grad
            first.mul_(beta1).add_(grad, alpha=1 - beta1)
            second.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denominator = (second / correction2).sqrt_().add_(1e-8)
            tensor.addcdiv_(first, denominator, value=-lr / correction1)
            tensor.grad = None


def optimise(
    bank: ReferenceBank,
    transforms: Transforms,
    test: PreparedTest,
    *,
    coarse: bool,
    iterations: int,
    stage: str,
    config: EngineConfig,
) -> Transforms:
    """Adam on weighted NCC for one stage: ``affine``, ``slices`` (affine + per-slice
    translation) or ``ffd`` (free-form deformation per slice)."""
    if iterations <= 0:
        return transforms
    current = transforms.detached()
    groups: list[tuple[torch.Tensor, float]] = []
    if stage in ("affine", "slices"):
        groups += [
            (current.matrix, config.lr_matrix),
            (current.shift, config.lr_mm),
            (current.z_scale, config.lr_matrix),
            (current.z_shift, config.lr_mm),
        ]
    if stage == "slices":
        groups.append((current.slice_shift, config.lr_mm / 2))
    if stage == "ffd":
        if current.control is None:
            current.control = torch.zeros(
                len(bank.z_rel), 2, config.ffd_control, config.ffd_control, device=bank.device
            )
        groups.append((current.control, config.lr_ffd_mm))
    for tensor, _ in groups:
        tensor.requires_grad_(True)
    optimiser = _Adam(groups)
    sampler = _SliceSampler((test.coarse if coarse else test.fine)[0].to(bank.device))
    for _ in range(iterations):
        loss = (1 - similarity(bank, current, test, coarse, sampler)).sum()
        if stage == "ffd" and current.control is not None:
            c = current.control
            rough = (c[..., 1:, :] - c[..., :-1, :]).pow(2).mean((1, 2, 3)) + (
                c[..., :, 1:] - c[..., :, :-1]
            ).pow(2).mean((1, 2, 3))
            loss = loss + config.ffd_smoothness * bank.per_reference_mean(rough).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
    return current.detached()


@dataclass(frozen=True)
class ReferenceScores:
    """Per-reference Dice of the propagated segmentation: ``dice[M, 5]`` (BG LV LVM RVC WH)."""

    ids: list[str]
    dice: torch.Tensor


def propagate(
    bank: ReferenceBank, transforms: Transforms, test: PreparedTest
) -> tuple[torch.Tensor, torch.Tensor]:
    """The test segmentation warped onto every reference field: labels ``[P, F, F]`` (uint8,
    arg-max of the warped class fractions) and which planes the test stack covers ``[P]``."""
    planes = _plane_coordinates(bank, transforms, "field", test)
    fractions = _SliceSampler(test.segmentation[0].to(bank.device))(planes)  # [P, 4, s, s]
    return fractions.argmax(1).to(torch.uint8), covered_planes(planes, test)


def covered_planes(planes: _Planes, test: PreparedTest) -> torch.Tensor:
    """Which reference planes ``[P]`` land inside the test stack along the long axis."""
    z_test = (planes.z_index + 0.5) * test.slice_spacing_mm
    return (z_test >= 0) & (z_test <= test.extent_mm[0])


def score(
    bank: ReferenceBank,
    propagated: torch.Tensor,
    covered: torch.Tensor,
    unseen: torch.Tensor,
    *,
    outside: bool = True,
) -> torch.Tensor:
    """Dice per class ``[M, 5]`` (BG LV LVM RVC WH, float64, on the CPU).

    Follows ``cmrqc_shared.metrics.dice_per_class`` (WH = all foreground; two empty masks
    agree: ``EMPTY_PAIR_DICE``) over the covered planes of each reference, plus ``unseen``
    segmentation ``[M, 4]`` (reference voxels mapped outside the field) as false positives and,
    with ``outside``, the reference image outside the field as agreed background.
    """
    truth = bank.labels
    weight = covered.double()

    def count(mask: torch.Tensor) -> torch.Tensor:
        return bank.per_reference_sum(mask.flatten(1).sum(1).double() * weight)

    counts = []
    for label in range(4):
        p, r = propagated == label, truth == label
        counts.append((count(p), count(r), count(p & r)))
    p, r = propagated > 0, truth > 0
    counts.append((count(p), count(r), count(p & r)))

    agreed = bank.outside_px.double() * bank.per_reference_sum(weight) if outside else 0.0
    dice = torch.zeros(bank.size, 5, dtype=torch.float64, device=bank.device)
    for index, (p_count, r_count, both) in enumerate(counts):
        if index == 0:
            p_count, r_count, both = p_count + agreed, r_count + agreed, both + agreed
        elif index < 4:
            p_count = p_count + unseen[:, index]
        else:
            p_count = p_count + unseen[:, 1:].sum(1)
        total = p_count + r_count
        dice[:, index] = torch.where(
            total > 0,
            2 * both / total.clamp_min(1e-9),
            torch.full_like(total, EMPTY_PAIR_DICE),
        )
    return dice.cpu()


def propagate_and_score(
    bank: ReferenceBank, transforms: Transforms, test: PreparedTest
) -> ReferenceScores:
    """Warp the test segmentation onto every reference and score it against the labels
    (``propagate``, ``score`` with the unseen segmentation and the outside background)."""
    propagated, covered = propagate(bank, transforms, test)
    unseen = unseen_segmentation(bank, transforms, test)
    return ReferenceScores(
        ids=list(bank.ids), dice=score(bank, propagated, covered, unseen, outside=True)
    )


def unseen_segmentation(
    bank: ReferenceBank, transforms: Transforms, test: PreparedTest
) -> torch.Tensor:
    """Segmentation mass per class that the transform maps outside each reference's field.

    In reference voxels ``[M, 4]``: the test voxels' volume divided by the transform's
    volume change (|det A|·s) and the reference voxel volume. Class 0 is left at 0. The
    per-slice translations and the deformation are small and ignored here.
    """
    device = bank.device
    seg = test.segmentation[0].to(device)  # [4, k, rows, cols]
    foreground = seg[1:].sum(0) > 0.01
    count = bank.size
    if not bool(foreground.any()):
        return torch.zeros(count, 4, dtype=torch.float64, device=device)
    kk, jj, ii = torch.nonzero(foreground, as_tuple=True)
    dy, dx = test.fine_spacing_mm
    dz = test.slice_spacing_mm
    points = torch.stack([(ii.float() + 0.5) * dx, (jj.float() + 0.5) * dy], -1)  # [N, 2]
    z = (kk.float() + 0.5) * dz
    mass = seg[1:, kk, jj, ii].T.double()  # [N, 3]
    inverse = torch.linalg.inv(transforms.matrix)  # [M, 2, 2]
    local = (points[None] - transforms.shift[:, None]) @ inverse.transpose(1, 2)  # [M, N, 2]
    half = bank.field_px * bank.grid_mm / 2
    inside_xy = (local.abs() <= half).all(-1)
    z_rel = (z[None] - transforms.z_shift[:, None]) / transforms.z_scale[:, None]
    spacing = bank.slice_spacing[:, None]
    inside_z = (z_rel >= bank.z_first[:, None] - spacing / 2) & (
        z_rel <= bank.z_last[:, None] + spacing / 2
    )
    outside = (~(inside_xy & inside_z)).double()  # [M, N]
    change = (torch.det(transforms.matrix).abs() * transforms.z_scale.abs()).double()
    ref_voxel = (bank.grid_mm**2 * bank.slice_spacing).double()
    scaled = (outside @ mass) * (dy * dx * dz) / (change * ref_voxel)[:, None]
    return torch.cat([torch.zeros(count, 1, dtype=torch.float64, device=device), scaled], 1)
