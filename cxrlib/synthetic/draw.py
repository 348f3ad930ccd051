"""Drawing the synthetic radiographs: anatomy, each finding's signature, devices; JPEG bytes.

Each image comes from an RNG seeded with (seed, row of the image in the metadata table) and its
anatomy from one seeded with (seed, subject_id), so the bytes do not depend on the number of workers.
"""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageFilter

from ..labels import FINDINGS
from .tables import LATERAL_VIEWS, SMALL_FACTOR

# ---------------------------------------------------------------------------------------
# Images. Coordinates: x across, y down, the thorax roughly in [-1, 1]; a frame maps pixels
# to them with a per-image shift, zoom and small rotation. "Density" D is drawn additively
# (tissue adds, air subtracts) and windowed to 8 bits at the end, like a radiograph.

class Frame:
    """Pixel grid -> thorax coordinates (x, y arrays), with a random shift, zoom and tilt."""

    def __init__(self, h: int, w: int, rng):
        self.h, self.w = h, w
        self.cx = w / 2 + rng.normal(0, 0.02) * w
        self.cy = h / 2 + rng.normal(0.03, 0.02) * h
        self.s = min(h, w) / 2 * rng.uniform(0.88, 1.0)
        angle = math.radians(rng.normal(0, 2.5))
        self.cos, self.sin = math.cos(angle), math.sin(angle)
        r = (np.arange(h, dtype=np.float32)[:, None] - self.cy) / self.s
        c = (np.arange(w, dtype=np.float32)[None, :] - self.cx) / self.s
        self.x = (self.cos * c + self.sin * r).astype(np.float32)
        self.y = (-self.sin * c + self.cos * r).astype(np.float32)

    def box(self, x0, x1, y0, y1):
        """Pixel slices covering the thorax box [x0, x1] x [y0, y1]; None when off-image."""
        xs, ys = np.array([x0, x1, x0, x1]), np.array([y0, y0, y1, y1])
        cols = self.cx + self.s * (self.cos * xs - self.sin * ys)
        rows = self.cy + self.s * (self.sin * xs + self.cos * ys)
        c0, c1 = max(0, int(cols.min()) - 1), min(self.w, int(cols.max()) + 2)
        r0, r1 = max(0, int(rows.min()) - 1), min(self.h, int(rows.max()) + 2)
        return (slice(r0, r1), slice(c0, c1)) if r1 > r0 and c1 > c0 else None


def _ramp(v, width):
    """0 below -width/2, 1 above +width/2: a cheap soft edge."""
    v = v * (1.0 / width)
    v += 0.5
    return np.minimum(np.maximum(v, 0.0, out=v), 1.0, out=v)


def _sq(v):
    return v * v


def _ellipse(x, y, cx, cy, ax, ay):
    return _sq((x - cx) / ax) + _sq((y - cy) / ay)


def _add_disc(D, f, cx, cy, rx, ry, value, edge=0.15):
    sl = f.box(cx - rx, cx + rx, cy - ry, cy + ry)
    if sl:
        D[sl] += value * _ramp(1 - _ellipse(f.x[sl], f.y[sl], cx, cy, rx, ry), edge)


def _add_blob(D, f, cx, cy, sx, sy, value, mask=None):
    sl = f.box(cx - 3 * sx, cx + 3 * sx, cy - 3 * sy, cy + 3 * sy)
    if sl:
        blob = np.exp(-0.5 * _ellipse(f.x[sl], f.y[sl], cx, cy, sx, sy))
        D[sl] += value * (blob if mask is None else blob * mask[sl])


def _add_stroke(D, f, points, width, value):
    """A bright polyline (tube, wire, plate) of the given width."""
    pts = np.asarray(points, dtype=np.float32)
    sl = f.box(pts[:, 0].min() - width, pts[:, 0].max() + width,
               pts[:, 1].min() - width, pts[:, 1].max() + width)
    if not sl:
        return
    x, y = f.x[sl], f.y[sl]
    dist = np.full(x.shape, np.inf, dtype=np.float32)
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((x - x0) * dx + (y - y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
        dist = np.minimum(dist, np.hypot(x - x0 - t * dx, y - y0 - t * dy))
    D[sl] += value * _ramp(width / 2 - dist, width / 2)


def _curve(p0, p1, p2, n=10):
    """A quadratic Bezier from p0 to p2 bending towards p1, as n points."""
    t = np.linspace(0, 1, n)[:, None]
    p0, p1, p2 = (np.asarray(p, dtype=float) for p in (p0, p1, p2))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t * t * p2


def _smooth_noise(rng, h, w, cells):
    """Low-frequency noise: a coarse normal grid upsampled bicubically."""
    ch, cw = max(2, h * cells // max(h, w)), max(2, w * cells // max(h, w))
    coarse = Image.fromarray(rng.standard_normal((ch, cw)).astype(np.float32), mode="F")
    return np.asarray(coarse.resize((w, h), Image.BICUBIC))


def _anatomy(rng, lateral: bool) -> dict:
    """One subject's geometry (the anatomy RNG is seeded per subject). Findings edit it."""
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    if lateral:
        lung = dict(cx=0.05, cy=-0.12, ax=u(0.48, 0.54), ay=u(0.6, 0.66), dome=u(0.36, 0.44),
                    tilt=0.08, taper=0.15, lat=1.0)
        return dict(lateral=True, tissue=u(0.5, 0.58), body_ax=u(0.74, 0.82), lungs=[lung],
                    heart=dict(cx=-0.2, cy=u(0.2, 0.26), ax=u(0.25, 0.29), ay=u(0.22, 0.26)),
                    rib=u(0.1, 0.115))
    lungs = [dict(cx=side * u(0.36, 0.4), cy=u(-0.14, -0.08), ax=u(0.27, 0.31) - 0.02 * (side > 0),
                  ay=u(0.6, 0.66), dome=u(0.38, 0.46) + 0.04 * (side > 0), tilt=0.0, taper=0.3, lat=side)
             for side in (-1.0, 1.0)]
    return dict(lateral=False, tissue=u(0.5, 0.58), body_ax=u(0.86, 0.96), lungs=lungs,
                heart=dict(cx=u(0.08, 0.12), cy=u(0.17, 0.23), ax=u(0.27, 0.31), ay=u(0.2, 0.23)),
                med_w=u(0.09, 0.11), med_upper=1.0, rib=u(0.1, 0.115))


def _lung_shape(x, y, lung):
    """Normalised radius^2 of a lung: narrow apex, broad base."""
    v = (y - lung["cy"]) / lung["ay"]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # far outside: inf, as it should be
        return _sq((x - lung["cx"]) / (lung["ax"] * (1 + lung["taper"] * v))) + _sq(v)


def _lung_mask(f, lung):
    """Where the lung's air is: inside its outline and above its diaphragm dome."""
    sl = f.box(lung["cx"] - 1.5 * lung["ax"], lung["cx"] + 1.5 * lung["ax"], lung["cy"] - lung["ay"],
               lung["cy"] + lung["ay"])
    mask = np.zeros_like(f.x)
    if sl:
        x, y = f.x[sl], f.y[sl]
        across = (x - lung["cx"]) / lung["ax"]
        # Domes sit lowest laterally (the costophrenic angles); on a lateral view, posteriorly.
        dome = lung["dome"] + 0.12 * _sq(across) + lung["tilt"] * across
        mask[sl] = _ramp(1 - _lung_shape(x, y, lung), 0.15) * _ramp(dome - y, 0.03)
    return mask


def _draw_base(f, a, rng):
    """The normal chest: returns density D and each lung's visible-air mask."""
    x, y, ax_ = f.x, f.y, np.abs(f.x)
    width = a["body_ax"] * (1 - 0.06 * y)
    shoulders = -0.95 + 0.6 * _sq(np.maximum(ax_ - 0.25, 0))
    body = np.maximum(_ramp(width - ax_, 0.08) * _ramp(y - shoulders, 0.1), _ramp(0.26 - ax_, 0.08))
    D = a["tissue"] * body * (1 - 0.25 * _sq(x / width))  # thicker in the middle
    h = a["heart"]
    heart = np.zeros_like(x)
    sl = f.box(h["cx"] - h["ax"], h["cx"] + h["ax"], h["cy"] - h["ay"], h["cy"] + h["ay"])
    if sl:
        heart[sl] = _ramp(1 - _ellipse(x[sl], y[sl], h["cx"], h["cy"], h["ax"], h["ay"]), 0.3)
    if a["lateral"]:
        occluders = heart
    else:  # mediastinum: widens towards the heart; an aortic knob on the left
        med_w = a["med_w"] * np.where(y < -0.1, a["med_upper"], 1 + 0.5 * (y + 0.1)).astype(np.float32)
        med = _ramp(med_w - np.abs(x - 0.01), 0.04) * _ramp(h["cy"] - y, 0.1)
        occluders = np.maximum(heart, med)
        sl = f.box(0.0, 0.24, -0.45, -0.25)
        if sl:
            occluders[sl] = np.maximum(occluders[sl], _ramp(1 - _ellipse(x[sl], y[sl], 0.11, -0.35, 0.08, 0.07), 0.3))
    visible = []
    for lung in a["lungs"]:
        m = _lung_mask(f, lung) * (1 - occluders)
        visible.append(m)
        # Air: darkest where the lung is thickest.
        D -= 0.38 * m * (0.7 + 0.3 * _ramp(1 - _lung_shape(x, y, lung), 1.0))
    D += 0.06 * heart * body
    if not a["lateral"]:  # the trachea's air column
        D -= 0.08 * _ramp(0.035 - np.abs(x - 0.005), 0.02) * _ramp(-0.35 - y, 0.1)
    lo = max(lung["dome"] for lung in a["lungs"])
    D += 0.1 * _ramp(y - lo - 0.05, 0.25) * body  # liver and abdomen below the domes
    if not a["lateral"]:
        _add_disc(D, f, 0.3, a["lungs"][1]["dome"] + 0.12, 0.09, 0.05, -0.1)  # gastric bubble
    air = visible[0] if len(visible) == 1 else np.maximum(visible[0], visible[1])
    # Lung markings: vessels fanning out from the hila, denser centrally.
    hilum = 1.0 if a["lateral"] else 0.5 + _ramp(1 - _ellipse(ax_, y, 0.15, -0.02, 0.35, 0.45), 1.0)
    D += 0.06 * _smooth_noise(rng, f.h, f.w, 28) * air * hilum
    _draw_bones(D, f, a, body, air)
    return D, visible


def _draw_bones(D, f, a, body, air):
    x, y = f.x, f.y
    if a["lateral"]:
        # Spine behind the lungs: vertebral bodies with darker discs; a thin sternum in front.
        column = _ramp(0.085 - np.abs(x - 0.6 - 0.05 * y), 0.03)
        discs = 0.6 + 0.4 * _ramp(np.cos(2 * np.pi * y / 0.13) + 0.7, 0.6)
        D += 0.22 * column * discs * body
        D += 0.1 * _ramp(0.025 - np.abs(x + 0.6 - 0.12 * y), 0.02) * _ramp(0.2 - y, 0.1) * body
        ribs = np.cos(2 * np.pi * (y - 0.3 * x) / a["rib"])
        D += 0.04 * _ramp(ribs - 0.5, 0.4) * (0.3 + air)
        return
    thorax = _ramp(1 - _ellipse(x, y, 0.0, -0.14, 0.72, 0.74), 0.15) * _ramp(np.abs(x) - 0.07, 0.04)
    posterior = np.cos(2 * np.pi * (y - 0.35 * _sq(x)) / a["rib"])
    anterior = np.cos(2 * np.pi * (y + 0.25 * _sq(x)) / (a["rib"] * 1.15))
    # Ribs show through air, hardly through the mediastinum or the abdomen.
    D += (0.07 * _ramp(posterior - 0.45, 0.35) + 0.03 * _ramp(anterior - 0.5, 0.4)) * thorax * (0.25 + air)
    spine = _ramp(0.065 - np.abs(x - 0.005), 0.02)
    D += 0.1 * spine * (0.7 + 0.3 * np.cos(2 * np.pi * y / 0.12)) * body
    for side in (-1, 1):  # clavicles
        _add_stroke(D, f, _curve((side * 0.08, -0.68), (side * 0.35, -0.76), (side * 0.68, -0.86)), 0.05, 0.18)


# --- findings: each edits the geometry (before drawing) or adds density (after) ----------

def _pick_lung(a, rng):
    return int(rng.integers(len(a["lungs"])))


def _geometry_findings(a, strength: dict, rng):
    if s := strength.get("Cardiomegaly"):
        a["heart"]["ax"] *= 1 + 0.5 * s
        a["heart"]["ay"] *= 1 + 0.15 * s
        a["heart"]["cx"] += 0.06 * s
    if (s := strength.get("Enlarged Cardiomediastinum")) and not a["lateral"]:
        a["med_upper"] = 1 + 2.2 * s
    if s := strength.get("Atelectasis"):  # volume loss lifts the hemidiaphragm on that side
        a["lungs"][_pick_lung(a, rng)]["dome"] -= 0.12 * s


def _draw_findings(D, f, a, visible, strength: dict, rng):
    x, y = f.x, f.y
    lungs, lateral = a["lungs"], a["lateral"]
    air = visible[0] if len(visible) == 1 else np.maximum(visible[0], visible[1])
    fill = np.zeros_like(D)  # opacities replace air: together no denser than soft tissue, only where air was
    if (s := strength.get("Enlarged Cardiomediastinum")) and lateral:
        _add_blob(D, f, -0.38, -0.3, 0.14, 0.2, 0.22 * s)  # retrosternal space filled
    if s := strength.get("Pleural Effusion"):  # basal fluid: a meniscus climbing the lateral wall
        for i in (range(len(lungs)) if rng.random() < 0.4 else [_pick_lung(a, rng)]):
            lung = lungs[i]
            across = np.clip((x - lung["cx"]) / lung["ax"] * lung["lat"], -1, 1)
            level = lung["dome"] - rng.uniform(0.15, 0.35) - 0.15 * across
            fill += 0.45 * s * _ramp(y - level, 0.08) * visible[i]
    if s := strength.get("Pneumothorax"):
        _draw_pneumothorax(D, f, lungs[i := _pick_lung(a, rng)], visible[i], s)
    if s := strength.get("Edema"):  # bilateral perihilar haze, reticular
        texture = 0.7 + 0.3 * _smooth_noise(rng, f.h, f.w, 40)
        for cx in ((-0.2, 0.22) if not lateral else (0.0,)):
            _add_blob(fill, f, cx, -0.02, 0.2, 0.26, 0.3 * s, mask=air * texture)
    if s := strength.get("Consolidation"):  # one lobe, dense and homogeneous, sharp fissure
        i = _pick_lung(a, rng)
        lung = lungs[i]
        fissure = lung["cy"] + rng.uniform(0.0, 0.2) + 0.3 * (x - lung["cx"]) / lung["ax"] * lung["lat"]
        lobe = _ramp(y - fissure, 0.03) if rng.random() < 0.7 else _ramp(fissure - 0.3 - y, 0.03)
        fill += 0.45 * s * lobe * visible[i]
    if s := strength.get("Pneumonia"):  # patchy, multifocal, mottled
        mottle = np.clip(0.7 + 0.5 * _smooth_noise(rng, f.h, f.w, 48), 0, None)
        for _ in range(rng.integers(5, 10)):
            lung = lungs[_pick_lung(a, rng)]
            _add_blob(fill, f, lung["cx"] + rng.uniform(-0.6, 0.6) * lung["ax"],
                      lung["cy"] + rng.uniform(0.0, 0.55) * lung["ay"],
                      rng.uniform(0.06, 0.1), rng.uniform(0.06, 0.1), 0.4 * s, mask=air * mottle)
    if s := strength.get("Lung Opacity"):  # broad ground-glass haze over a large zone
        lung = lungs[_pick_lung(a, rng)]
        _add_blob(fill, f, lung["cx"] + rng.uniform(-0.2, 0.2) * lung["ax"],
                  lung["cy"] + rng.uniform(-0.4, 0.2) * lung["ay"], 0.3, 0.35, 0.22 * s, mask=air)
    if s := strength.get("Atelectasis"):  # a plate: thin, near-horizontal, in the lower zone
        lung = lungs[_pick_lung(a, rng)]
        cx = lung["cx"] + lung["lat"] * rng.uniform(0.0, 0.4) * lung["ax"]  # lateral, clear of the heart
        cy = lung["dome"] - rng.uniform(0.15, 0.28)
        half, tilt = rng.uniform(0.13, 0.18), rng.uniform(-0.06, 0.06)
        _add_stroke(fill, f, [(cx - half, cy - tilt), (cx + half, cy + tilt)], 0.08, 0.55 * s)
    if s := strength.get("Pleural Other"):  # thickening along the lateral chest wall
        i = _pick_lung(a, rng)
        lung = lungs[i]
        r2 = _lung_shape(x, y, lung)
        side = _ramp((x - lung["cx"]) * lung["lat"], 0.1)
        fill += 0.45 * s * _ramp(r2 - 0.5, 0.15) * side * visible[i]
    D += np.minimum(fill, 0.4 * air)
    if s := strength.get("Lung Lesion"):  # a nodule with a sharp edge
        lung = lungs[_pick_lung(a, rng)]
        r = rng.uniform(0.10, 0.14)
        _add_disc(D, f, lung["cx"] + rng.uniform(-0.5, 0.5) * lung["ax"],
                  lung["cy"] + rng.uniform(-0.6, 0.3) * lung["ay"], r, r, 0.75 * s, edge=0.2)
    if s := strength.get("Fracture"):  # healing rib fracture: bright callus and a step-off
        lung = lungs[_pick_lung(a, rng)]
        v = rng.uniform(-0.7, 0.3)
        cx = lung["cx"] + lung["lat"] * lung["ax"] * (1 + lung["taper"] * v) * math.sqrt(1 - v * v)
        cy = lung["cy"] + v * lung["ay"]
        _add_disc(D, f, cx, cy, 0.12, 0.08, 0.75 * s, edge=0.3)
        _add_stroke(D, f, [(cx - 0.15, cy + 0.05), (cx, cy + 0.05)], 0.05, 0.45 * s)
        _add_stroke(D, f, [(cx, cy - 0.05), (cx + 0.15, cy - 0.05)], 0.05, 0.45 * s)
    if s := strength.get("Support Devices"):
        _draw_devices(D, f, a, s, rng)


def _draw_pneumothorax(D, f, lung, visible, s):
    """Air between chest wall and a collapsed lung: black, no markings, a thin pleural line."""
    shrink = 0.5 * s
    inner = dict(lung, ax=lung["ax"] * (1 - shrink), ay=lung["ay"] * (1 - 0.6 * shrink),
                 cx=lung["cx"] - lung["lat"] * lung["ax"] * shrink, cy=lung["cy"] + lung["ay"] * shrink * 0.6)
    r2 = _lung_shape(f.x, f.y, inner)
    D -= 0.22 * s * visible * _ramp(r2 - 1, 0.08)
    D += 0.16 * s * visible * _ramp(0.1 - np.abs(r2 - 1), 0.08)


def _draw_devices(D, f, a, s, rng):
    tube_x = 0.0 if not a["lateral"] else 0.1
    for kind in rng.permutation(["ett", "ng", "line", "ecg", "pacer"])[: rng.integers(2, 5)]:
        if kind == "ett":
            _add_stroke(D, f, [(tube_x, -1.2), (tube_x + 0.01, rng.uniform(-0.55, -0.4))], 0.045, 0.55 * s)
        elif kind == "ng":
            end = (0.3, a["lungs"][-1]["dome"] + 0.15)
            _add_stroke(D, f, _curve((tube_x - 0.02, -1.2), (0.02, 0.2), end), 0.03, 0.5 * s)
        elif kind == "line":
            side = float(rng.choice([-1, 1]))
            _add_stroke(D, f, _curve((side * 0.75, -0.85), (side * 0.2, -0.7), (0.02 * side, -0.2)), 0.03, 0.55 * s)
        elif kind == "ecg":
            for _ in range(rng.integers(3, 6)):
                cx, cy = rng.uniform(-0.7, 0.7), rng.uniform(-0.8, 0.5)
                _add_disc(D, f, cx, cy, 0.05, 0.05, 0.6 * s, edge=0.4)
                _add_stroke(D, f, _curve((cx, cy), (cx + rng.uniform(-0.3, 0.3), cy + 0.2),
                                         (math.copysign(1.1, cx), cy + rng.uniform(-0.2, 0.4)), 6), 0.015, 0.4 * s)
        elif kind == "pacer":
            cx = float(rng.choice([-0.5, 0.5]))
            _add_disc(D, f, cx, -0.68, 0.1, 0.07, 0.7 * s, edge=0.15)
            h = a["heart"]
            _add_stroke(D, f, _curve((cx, -0.68), (0.0, -0.5), (h["cx"] + 0.05, h["cy"])), 0.025, 0.55 * s)


def render(h: int, w: int, view: str, labels: np.ndarray, rng, anatomy_rng, draw_scale: int = 2,
           blur: float = 0.8, signature: float = 1.0) -> np.ndarray:
    """One radiograph as an (h, w) uint8 array. labels: FINDINGS order, 1/0/-1/NaN.

    signature scales every finding's strength (the planted disparity draws one group's at less
    than 1); the RNG draws are the same whatever it is, so only those findings' pixels change.

    The anatomy is drawn at 1/draw_scale of the size and upsampled (it is smooth anyway);
    the grain is added at full size, then blurred by `blur` pixels.
    """
    lateral = view in LATERAL_VIEWS
    a = _anatomy(anatomy_rng, lateral)
    strength = {}
    for finding, value in zip(FINDINGS, labels):
        if finding == "No Finding":
            continue
        if value == 1.0:
            strength[finding] = rng.uniform(0.8, 1.2)
        elif value == -1.0 and rng.random() < 0.5:
            strength[finding] = rng.uniform(0.2, 0.45)  # uncertain: faint, or not drawn
    strength = {finding: value * signature for finding, value in strength.items()}
    f = Frame(math.ceil(h / draw_scale), math.ceil(w / draw_scale), rng)
    _geometry_findings(a, strength, rng)
    D, visible = _draw_base(f, a, rng)
    _draw_findings(D, f, a, visible, strength, rng)
    # Exposure: window, uneven brightness, grain, gamma (a lookup table), slight blur.
    lo, hi = rng.uniform(-0.02, 0.06), rng.uniform(0.8, 0.95)
    D = (D - lo) * (255 / (hi - lo)) + 8 * _smooth_noise(rng, f.h, f.w, 6)
    if draw_scale > 1:
        D = np.asarray(Image.fromarray(D, mode="F").resize((w, h), Image.BICUBIC))
    D = D + rng.standard_normal(D.shape, dtype=np.float32) * 6.0
    image = Image.fromarray(np.clip(D + 0.5, 0, 255).astype(np.uint8), mode="L")
    gamma = rng.uniform(0.85, 1.15)
    image = image.point([round(255 * (v / 255) ** gamma) for v in range(256)])
    return np.asarray(image.filter(ImageFilter.GaussianBlur(radius=blur)) if blur else image)


def jpeg_bytes(job: tuple, seed: int, image_size: str) -> bytes:
    """The JPEG for one metadata row. job = (row, rel_path, rows, cols, view, labels, subject_id, signature)."""
    row, _, rows, cols, view, labels, subject_id, signature = job
    rng = np.random.default_rng([seed, 1, row])
    anatomy_rng = np.random.default_rng([seed, 2, subject_id])
    if image_size == "full":  # a light blur on the grain gives JPEG sizes near the release's ~1.5 MB
        pixels = render(rows, cols, view, labels, rng, anatomy_rng, draw_scale=4, blur=0.75, signature=signature)
    else:
        pixels = render(max(1, round(rows / SMALL_FACTOR)), max(1, round(cols / SMALL_FACTOR)),
                        view, labels, rng, anatomy_rng, signature=signature)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


