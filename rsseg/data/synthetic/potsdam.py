"""A small synthetic ISPRS Potsdam in the official on-disk layout.

``make bench DATASET=potsdam`` must run on a fresh machine without the real data, so rsseg writes
a handful of synthetic tiles exactly where and how the ISPRS archives put them::

    dst/2_Ortho_RGB/top_potsdam_{r}_{c}_RGB.tif                               RGB uint8 GeoTIFF
    dst/5_Labels_all/top_potsdam_{r}_{c}_label.tif                            RGB colour labels
    dst/5_Labels_all_noBoundary/top_potsdam_{r}_{c}_label_noBoundary.tif      eroded labels (black edges)
    dst/README_SYNTHETIC.txt

and ``rsseg prepare potsdam --src dst`` then treats it like the real download.

Each tile is a small suburban scene at 5 cm GSD, drawn first as a *material* map (asphalt, sidewalk,
paved yard, parking lot, roof, lawn, verge, tree crown, car, soil, rubble, water, bins), which fixes
the label (material → ISPRS class) before any pixel colour exists. The image is then rendered from
that map: a per-object base colour (roof colours, car colours and crown tones vary), per-material
texture from multi-scale noise, geometric shading (roof facets lit by the sun, crowns shaded as
domes, car windows), lane marks, cast shadows of buildings, trees and cars on the ground, and mild
global illumination, blur and sensor noise. Labels and image therefore agree pixel for pixel, classes
are separable by colour + texture + shape, but not by colour alone (grey roofs vs asphalt, shadows,
red cars vs red roofs vs soil).

Everything random comes from one ``numpy.random.Generator`` per tile, seeded from ``(seed, tile id)``,
so the files are byte-identical for a given seed and environment.
"""

from __future__ import annotations

import math
import os
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import tifffile

from rsseg.data.isprs import ISPRS_CLASSES, ISPRS_PALETTE, encode_isprs_label

__all__ = ["SYNTH_POTSDAM_TILES", "write_synthetic_potsdam", "render_synthetic_tile", "erode_label"]

# tile id -> (height, width). Sizes are deliberately not multiples of 256/512 and differ per tile so
# that tiling, padding and edge coverage are exercised.
SYNTH_POTSDAM_TILES: dict[str, tuple[int, int]] = {
    # UNetFormer-protocol training tiles
    "2_11": (1100, 1337),
    "3_10": (1213, 1061),
    "4_10": (1297, 1153),
    "6_7": (1031, 1409),
    "6_8": (1187, 1279),
    # UNetFormer-protocol validation tile
    "2_10": (1061, 1187),
    # official test tiles
    "2_13": (1153, 1297),
    "3_13": (1259, 1109),
    "4_14": (1009, 1381),
    # excluded by the UNetFormer protocol ("error annotations" in the real data)
    "7_10": (1019, 1063),
}

IMAGE_DIR = "2_Ortho_RGB"
LABEL_DIR = "5_Labels_all"
ERODED_DIR = "5_Labels_all_noBoundary"
BOUNDARY_RADIUS = 3  # px, disk, as the ISPRS eroded labels
GSD = 0.05  # metres per pixel
EPSG = 25832  # ETRS89 / UTM zone 32N
_TILE_ID = re.compile(r"^(\d+)_(\d+)$")

# --------------------------------------------------------------------------------------------------
# materials: (name, ISPRS class, noise amplitudes for scales (white, 1 px, 4 px, 24 px, 96 px), tint)
# --------------------------------------------------------------------------------------------------
ASPHALT, SIDEWALK, YARD, LOT, ROOF, GRASS, VERGE, TREE, CAR, SOIL, RUBBLE, WATER, BIN = range(13)
_MATERIALS = (
    ("asphalt", 0, (5, 4, 3, 5, 6), (1.0, 1.0, 1.02)),
    ("sidewalk", 0, (4, 3, 2, 3, 4), (1.0, 1.0, 1.0)),
    ("yard", 0, (5, 3, 3, 5, 4), (1.0, 0.98, 0.95)),
    ("parking lot", 0, (5, 4, 3, 5, 6), (1.0, 1.0, 1.02)),
    ("roof", 1, (3, 3, 1, 3, 3), (1.0, 1.0, 1.0)),
    ("lawn", 2, (6, 8, 6, 10, 8), (0.8, 1.0, 0.35)),
    ("verge", 2, (6, 8, 6, 9, 6), (0.8, 1.0, 0.35)),
    ("tree", 3, (5, 9, 15, 5, 4), (0.6, 1.0, 0.55)),
    ("car", 4, (2, 1, 0, 0, 0), (1.0, 1.0, 1.0)),
    ("soil", 5, (7, 7, 10, 14, 6), (1.0, 0.82, 0.6)),
    ("rubble", 5, (9, 12, 14, 10, 5), (1.0, 0.95, 0.85)),
    ("water", 5, (1, 1, 2, 4, 6), (0.6, 0.9, 1.0)),
    ("bin", 5, (2, 2, 1, 0, 0), (1.0, 1.0, 1.0)),
)
_MAT_CLASS = np.array([m[1] for m in _MATERIALS], dtype=np.uint8)
_MAT_AMPS = np.array([m[2] for m in _MATERIALS], dtype=np.float32)
_MAT_TINT = np.array([m[3] for m in _MATERIALS], dtype=np.float32)

_CAR_COLOURS = (  # RGB, weight
    ((175, 28, 30), 0.17), ((28, 55, 160), 0.15), ((228, 228, 226), 0.13), ((30, 30, 34), 0.10),
    ((165, 170, 176), 0.13), ((215, 185, 30), 0.07), ((30, 115, 65), 0.08), ((215, 110, 25), 0.07),
    ((120, 30, 110), 0.05), ((20, 150, 170), 0.05),
)
_PITCHED_ROOF_COLOURS = ((150, 82, 64), (122, 66, 56), (140, 98, 78), (84, 84, 90), (110, 92, 82), (160, 96, 70))
_FLAT_ROOF_COLOURS = ((178, 175, 168), (142, 142, 140), (100, 100, 104), (160, 150, 135))
_YARD_COLOURS = ((170, 165, 156), (182, 172, 148), (150, 122, 108))
_BIN_COLOURS = ((40, 90, 60), (50, 60, 140), (70, 70, 72), (150, 110, 40), (180, 180, 175))
_PAINT_RGB = np.array((214, 214, 206), dtype=np.float32)
_SHADOW_RGB = np.array((0.46, 0.50, 0.62), dtype=np.float32)  # multiplicative, bluish


def _lut(materials) -> np.ndarray:
    lut = np.zeros(256, dtype=bool)
    lut[list(materials)] = True
    return lut


def _unit(angle_rad: float) -> np.ndarray:
    return np.array([math.cos(angle_rad), math.sin(angle_rad)], dtype=np.float64)


def _box(centre, length: float, width: float, angle_deg: float) -> np.ndarray:
    """Corners of a rotated rectangle, ``length`` along ``angle_deg`` (image coordinates)."""
    return cv2.boxPoints(((float(centre[0]), float(centre[1])), (float(length), float(width)), float(angle_deg)))


class _Scene:
    """Material/object maps of one tile plus the geometry fields the renderer needs."""

    def __init__(self, h: int, w: int, rng: np.random.Generator):
        self.h, self.w, self.rng = h, w, rng
        self.mat = np.full((h, w), GRASS, dtype=np.uint8)
        self.obj = np.zeros((h, w), dtype=np.int32)
        lawn = np.array((114, 140, 74), dtype=np.float32) + rng.normal(0, (8, 6, 6)).astype(np.float32)
        self.colours: list[np.ndarray] = [lawn]
        self.shade = np.ones((h, w), dtype=np.float32)
        self.detail = np.zeros((h, w), dtype=np.float32)
        self.paint = np.zeros((h, w), dtype=np.uint8)
        self.shadow = np.zeros((h, w), dtype=np.uint8)
        self.tree_top = np.zeros((h, w), dtype=np.float32)
        sun_angle = rng.uniform(math.radians(15), math.radians(75)) + (math.pi if rng.random() < 0.3 else 0.0)
        self.sun = _unit(sun_angle)  # direction in which shadows fall
        light = np.array([-self.sun[0], -self.sun[1], 1.4])
        self.light = light / np.linalg.norm(light)
        self.theta = 0.0
        self.roads: list[dict] = []

    # -- primitives ---------------------------------------------------------------------------------
    def colour(self, rgb, jitter: float = 0.0) -> int:
        c = np.asarray(rgb, dtype=np.float32)
        if jitter:  # mostly brightness, a little hue: greys stay grey
            c = c + np.float32(self.rng.normal(0, jitter)) + self.rng.normal(0, 0.3 * jitter, 3).astype(np.float32)
        self.colours.append(np.clip(c, 0, 255))
        return len(self.colours) - 1

    def raster(self, polys, pad: int = 0):
        """Rasterise polygons into their clipped bounding box: ``((rows, cols), mask)`` or None."""
        pts = np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polys])
        x0, y0 = np.floor(pts.min(0)).astype(int) - pad
        x1, y1 = np.ceil(pts.max(0)).astype(int) + 1 + pad
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, self.w), min(y1, self.h)
        if x0 >= x1 or y0 >= y1:
            return None
        mask = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
        for p in polys:
            q = np.round((np.asarray(p, dtype=np.float64).reshape(-1, 2) - (x0, y0)) * 16).astype(np.int32)
            cv2.fillPoly(mask, [q], 1, lineType=cv2.LINE_8, shift=4)
        return (slice(y0, y1), slice(x0, x1)), mask.astype(bool)

    def fits(self, polys, allowed, min_inside: float = 0.5) -> bool:
        """True when every in-tile pixel of ``polys`` has an allowed material and enough lies inside."""
        r = self.raster(polys)
        if r is None:
            return False
        sl, m = r
        area = sum(abs(cv2.contourArea(np.asarray(p, dtype=np.float32))) for p in polys)
        if m.sum() < min_inside * max(area, 1.0):
            return False
        return bool(_lut(allowed)[self.mat[sl][m]].all())

    def put(self, polys, material: int, colour_id: int, where=None):
        r = self.raster(polys)
        if r is None:
            return None
        sl, m = r
        if where is not None:
            m &= _lut(where)[self.mat[sl]]
        self.mat[sl][m] = material
        self.obj[sl][m] = colour_id
        return sl, m

    def cast(self, poly, height: float):
        """Shadow of a prism with footprint ``poly`` and ``height`` px (convex hull of base and top)."""
        p = np.asarray(poly, dtype=np.float32).reshape(-1, 2)
        off = (self.sun * height).astype(np.float32)
        hull = cv2.convexHull(np.concatenate([p, p + off]))
        cv2.fillConvexPoly(self.shadow, np.round(hull * 16).astype(np.int32), 1, lineType=cv2.LINE_8, shift=4)

    def random_point(self, allowed, tries: int = 50):
        for _ in range(tries):
            x, y = self.rng.uniform(0, self.w), self.rng.uniform(0, self.h)
            if self.mat[int(y), int(x)] in allowed:
                return np.array([x, y])
        return None

    def frac(self, materials) -> float:
        return np.count_nonzero(_lut(materials)[self.mat]) / self.mat.size

    # -- layout -------------------------------------------------------------------------------------
    def build_roads(self):
        rng, h, w = self.rng, self.h, self.w
        self.theta = rng.normal(0, 0.03) if rng.random() < 0.35 else rng.uniform(-0.6, 0.6)
        d1, d2 = _unit(self.theta), _unit(self.theta + math.pi / 2)
        centre = np.array([w / 2, h / 2])
        size = min(h, w)
        specs = [(d1, d2 * rng.uniform(-0.3, 0.3) * size)]
        if rng.random() < 0.7:
            specs.append((d2, d1 * rng.uniform(-0.32, 0.32) * size))
        asphalt = self.colour((104, 104, 108), 6)
        for d, shift in specs:
            verge = 0.0 if rng.random() < 0.35 else rng.uniform(30, 60)
            self.roads.append(dict(p=centre + shift, d=d, wc=rng.uniform(110, 160), verge=verge,
                                   side=rng.uniform(40, 70), ang=math.degrees(math.atan2(d[1], d[0]))))
        span = 2.5 * (h + w)
        sidewalk = self.colour((158, 155, 150), 8)
        verge_c = self.colour(self.colours[0] * rng.uniform(0.9, 1.05), 4)
        for r in self.roads:
            full = r["wc"] + 2 * (r["verge"] + r["side"])
            r["full"] = full
            self.put([_box(r["p"], span, full, r["ang"])], SIDEWALK, sidewalk)
        for r in self.roads:
            if r["verge"] > 0:
                self.put([_box(r["p"], span, r["wc"] + 2 * r["verge"], r["ang"])], VERGE, verge_c)
        if len(self.roads) == 2:  # a paved junction square where the bands cross
            a, b = self.roads
            self.put([self._crossing(a, b, a["full"], b["full"])], SIDEWALK, sidewalk)
        for r in self.roads:
            self.put([_box(r["p"], span, r["wc"], r["ang"])], ASPHALT, asphalt)
        for r in self.roads:  # dashed centre line and solid edge lines
            d, n = r["d"], np.array([-r["d"][1], r["d"][0]])
            t = -span / 2 + rng.uniform(0, 200)
            while t < span / 2:
                a = r["p"] + d * t
                b = r["p"] + d * (t + 110)
                cv2.line(self.paint, tuple(np.round(a).astype(int)), tuple(np.round(b).astype(int)), 1, 5)
                t += 220
            for s in (-1, 1):
                off = n * s * (r["wc"] / 2 - 12)
                a, b = r["p"] + off - d * span / 2, r["p"] + off + d * span / 2
                cv2.line(self.paint, tuple(np.round(a).astype(int)), tuple(np.round(b).astype(int)), 1, 3)
        if len(self.roads) == 2:  # no lane marks inside the junction
            a, b = self.roads
            box = self._crossing(a, b, a["wc"] - 4, b["wc"] - 4)
            cv2.fillConvexPoly(self.paint, np.round(box * 16).astype(np.int32), 0, cv2.LINE_8, 4)

    @staticmethod
    def _crossing(a, b, wa, wb):
        na, nb = np.array([-a["d"][1], a["d"][0]]), np.array([-b["d"][1], b["d"][0]])
        m = np.stack([na, nb])
        corners = []
        for sa, sb in ((-1, -1), (-1, 1), (1, 1), (1, -1)):
            rhs = np.array([na @ a["p"] + sa * wa / 2, nb @ b["p"] + sb * wb / 2])
            corners.append(np.linalg.solve(m, rhs))
        return np.array(corners, dtype=np.float32)

    def build_buildings(self):
        rng, h, w = self.rng, self.h, self.w
        target = rng.uniform(0.24, 0.34) * h * w
        built, tries = 0.0, 0
        while built < target and tries < 500:
            tries += 1
            c = rng.uniform((-60, -60), (w + 60, h + 60))
            ang = math.degrees(self.theta) + (90 if rng.random() < 0.5 else 0) + rng.normal(0, 1.5)
            shrink = 1.0 if tries < 200 else 0.7  # smaller houses fill the gaps late in the search
            length = rng.uniform(220, 520) * shrink
            width = rng.uniform(160, min(330, length / shrink)) * shrink
            u, v = _unit(math.radians(ang)), _unit(math.radians(ang + 90))
            parts = [(c, length, width, ang)]
            if rng.random() < 0.35:  # L-shaped: a wing at one end, perpendicular to the main body
                sw, lw = rng.uniform(0.5, 0.8) * width, rng.uniform(0.5, 1.1) * width
                su, sv = rng.choice((-1, 1)), rng.choice((-1, 1))
                wc = c + u * su * (length / 2 - sw / 2) + v * sv * (width / 2 + lw) / 2
                parts.append((wc, width / 2 + lw, sw, ang + 90))
            polys = [_box(*p) for p in parts]
            gap = rng.uniform(12, 26)
            grown = [_box(p[0], p[1] + 2 * gap, p[2] + 2 * gap, p[3]) for p in parts]
            if not self.fits(grown, (GRASS, YARD), min_inside=0.35):
                continue
            if rng.random() < 0.55:  # paved yard / courtyard around the house
                margin = rng.uniform(30, 90)
                yard = self.colour(_YARD_COLOURS[rng.integers(len(_YARD_COLOURS))], 6)
                self.put([_box(p[0], p[1] + 2 * margin, p[2] + 2 * margin, p[3]) for p in parts], YARD, yard,
                         where=(GRASS,))
            flat = rng.random() < 0.3
            palette = _FLAT_ROOF_COLOURS if flat else _PITCHED_ROOF_COLOURS
            roof = self.colour(palette[rng.integers(len(palette))], 9)
            kind = "flat" if flat else ("hip" if rng.random() < 0.35 else "gable")
            height = rng.uniform(60, 150)
            for poly in polys:
                self.cast(poly, height)
            for p, poly in zip(parts, polys, strict=True):
                r = self.put([poly], ROOF, roof)
                if r is not None:
                    self._roof(r, *p, kind=kind)
            r = self.raster(polys)
            if r is not None:
                built += r[1].sum()

    def _roof(self, region, c, length, width, ang, kind):
        (sy, sx), m = region
        ys, xs = np.mgrid[sy, sx].astype(np.float32)
        u, v = _unit(math.radians(ang)), _unit(math.radians(ang + 90))
        du = (xs - c[0]) * u[0] + (ys - c[1]) * u[1]
        dv = (xs - c[0]) * v[0] + (ys - c[1]) * v[1]
        lit = -self.sun  # facets facing the sun are brighter
        edge = np.minimum(length / 2 - np.abs(du), width / 2 - np.abs(dv))
        detail = np.zeros_like(du)
        if kind == "flat":
            shade = np.ones_like(du)
            detail += np.where(edge < 7, 22.0, 0.0)  # parapet
            for _ in range(self.rng.integers(0, 4)):  # vents / skylights / HVAC boxes
                bu = self.rng.uniform(-length / 2 + 40, length / 2 - 40)
                bv = self.rng.uniform(-width / 2 + 40, width / 2 - 40)
                hw = self.rng.uniform(8, 22, size=2)
                box = (np.abs(du - bu) < hw[0]) & (np.abs(dv - bv) < hw[1])
                detail += np.where(box, self.rng.choice((-45.0, 35.0)), 0.0)
        else:
            if kind == "hip":
                end = (np.abs(du) - (length - width) / 2) > np.abs(dv)
                facing = np.where(end, np.sign(du) * (u @ lit), np.sign(dv) * (v @ lit))
                across = np.where(end, du, dv)
            else:
                facing = np.sign(dv) * (v @ lit)
                across = dv
            shade = 1.0 + 0.2 * facing.astype(np.float32)
            detail += 5.0 * np.sin(across * (2 * np.pi / 7.0))  # rows of tiles parallel to the eaves
            detail += np.where(np.abs(dv) < 2.5, 20.0, 0.0) if kind == "gable" else 0.0  # ridge caps
            shade = np.where(edge < 4, shade * 0.85, shade)  # eaves
        self.shade[sy, sx][m] = shade[m]
        self.detail[sy, sx][m] = detail[m]

    def build_parking(self):
        rng = self.rng
        if rng.random() > 0.5:
            return
        for _ in range(60):
            c = self.random_point((GRASS,))
            if c is None:
                return
            ang = math.degrees(self.theta) + (90 if rng.random() < 0.5 else 0)
            length, width = rng.uniform(320, 480), rng.uniform(230, 290)
            poly = _box(c, length, width, ang)
            if not self.fits([_box(c, length + 30, width + 30, ang)], (GRASS, YARD), min_inside=0.6):
                continue
            self.put([poly], LOT, self.colour((96, 96, 99), 5))
            u, v = _unit(math.radians(ang)), _unit(math.radians(ang + 90))
            stall = rng.uniform(52, 60)
            n = int((length - 20) // stall)
            for row in (-1, 1):  # two rows of stalls along the long edges, cars nose-in
                for k in range(n + 1):
                    a = c + u * (-length / 2 + 10 + k * stall) + v * row * width / 2
                    b = a - v * row * 100
                    cv2.line(self.paint, tuple(np.round(a).astype(int)), tuple(np.round(b).astype(int)), 1, 3)
                for k in range(n):
                    if rng.random() < 0.6:
                        pc = c + u * (-length / 2 + 10 + (k + 0.5) * stall) + v * row * (width / 2 - 52)
                        self.car(pc, ang + 90 + rng.normal(0, 2), allowed=(LOT,))
            return

    def car(self, centre, ang, allowed=(ASPHALT,)) -> bool:
        rng = self.rng
        length, width = rng.uniform(82, 100), rng.uniform(36, 44)
        poly = _box(centre, length, width, ang)
        if not self.fits([poly], allowed, min_inside=0.9):
            return False
        weights = np.array([c[1] for c in _CAR_COLOURS])
        rgb = _CAR_COLOURS[rng.choice(len(_CAR_COLOURS), p=weights / weights.sum())][0]
        r = self.put([poly], CAR, self.colour(rgb, 8))
        if r is None:
            return False
        self.cast(poly, rng.uniform(14, 22))
        (sy, sx), m = r
        ys, xs = np.mgrid[sy, sx].astype(np.float32)
        u, v = _unit(math.radians(ang)), _unit(math.radians(ang + 90))
        a = ((xs - centre[0]) * u[0] + (ys - centre[1]) * u[1]) / length
        b = ((xs - centre[0]) * v[0] + (ys - centre[1]) * v[1]) / width
        front = 1 if rng.random() < 0.5 else -1
        a = a * front
        shade = np.ones_like(a)
        shade = np.where((np.abs(a) < 0.2) & (np.abs(b) < 0.36), 1.1, shade)  # roof
        shade = np.where((a > 0.2) & (a < 0.34) & (np.abs(b) < 0.42), 0.28, shade)  # windscreen
        shade = np.where((a < -0.26) & (a > -0.36) & (np.abs(b) < 0.4), 0.34, shade)  # rear window
        shade = np.where(np.abs(b) > 0.45, shade * 0.8, shade)
        self.shade[sy, sx][m] = shade[m]
        self.detail[sy, sx][m] = 0.0
        return True

    def build_street_cars(self):
        rng = self.rng
        span = 1.2 * (self.h + self.w)
        for r in self.roads:
            d, n = r["d"], np.array([-r["d"][1], r["d"][0]])
            for side in (-1, 1):
                t = -span / 2 + rng.uniform(0, 60)
                off = side * (r["wc"] / 2 - 34 - rng.uniform(0, 6))  # kerbside; cars are <= 44 px wide
                while t < span / 2:
                    if rng.random() < 0.33:
                        self.car(r["p"] + d * t + n * off, r["ang"] + rng.normal(0, 1.5))
                    t += rng.uniform(100, 125)
            for _ in range(rng.integers(0, 3)):  # a few cars driving in the lanes
                t = rng.uniform(-0.5, 0.5) * min(self.h, self.w)
                side = rng.choice((-1, 1))
                self.car(r["p"] + d * t + n * side * r["wc"] / 4, r["ang"] + rng.normal(0, 2))
        for _ in range(300):  # every tile gets some traffic, also where the kerbside draw was unlucky
            if self.frac((CAR,)) >= 0.008:
                break
            c = self.random_point((ASPHALT,))
            if c is not None and self.roads:
                r = min(self.roads, key=lambda r: abs(r["d"][0] * (c - r["p"])[1] - r["d"][1] * (c - r["p"])[0]))
                self.car(c, r["ang"] + rng.normal(0, 2))

    def build_clutter(self):
        rng = self.rng
        target = rng.uniform(0.015, 0.035) * self.mat.size
        area = 0
        for tries in range(250):
            if area >= target:
                break
            c = self.random_point((GRASS, YARD))
            if c is None:
                break
            radius = rng.uniform(60, 150) if tries < 120 else rng.uniform(35, 60)
            phi = np.linspace(0, 2 * np.pi, 28, endpoint=False)
            rr = radius * (1 + sum(rng.uniform(0, 0.18) * np.sin(k * phi + rng.uniform(0, 6.3)) for k in (2, 3, 5)))
            rr *= rng.uniform(0.85, 1.15, phi.size)
            poly = np.stack([c[0] + rr * np.cos(phi) * rng.uniform(0.7, 1.3), c[1] + rr * np.sin(phi)], 1)
            if not self.fits([poly], (GRASS, YARD), min_inside=0.5):
                continue
            kind = rng.choice((SOIL, RUBBLE, WATER), p=(0.5, 0.3, 0.2))
            rgb = {SOIL: (128, 98, 68), RUBBLE: (152, 142, 126), WATER: (44, 74, 86)}[kind]
            r = self.put([poly], kind, self.colour(rgb, 8))
            area += 0 if r is None else int(r[1].sum())
        for _ in range(rng.integers(3, 9)):  # bins, containers, sheds: small clutter near houses
            c = self.random_point((YARD, SIDEWALK, GRASS))
            if c is None:
                continue
            size = rng.uniform((22, 18), (70, 40))
            poly = _box(c, size[0], size[1], math.degrees(self.theta) + rng.normal(0, 8))
            if self.fits([poly], (YARD, SIDEWALK, GRASS), min_inside=0.9):
                self.put([poly], BIN, self.colour(_BIN_COLOURS[rng.integers(len(_BIN_COLOURS))], 8))
                self.cast(poly, rng.uniform(10, 30))

    def crown(self, c, radius: float) -> bool:
        rng = self.rng
        ext = radius * 1.35
        x0, y0 = max(int(c[0] - ext), 0), max(int(c[1] - ext), 0)
        x1, y1 = min(int(c[0] + ext) + 1, self.w), min(int(c[1] + ext) + 1, self.h)
        if x0 >= x1 or y0 >= y1:
            return False
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dx, dy = xs - np.float32(c[0]), ys - np.float32(c[1])
        phi = np.arctan2(dy, dx)
        rphi = np.full_like(phi, radius)
        for k in (2, 3, 4, 5, 7, 9):
            rphi += radius * rng.uniform(0.0, 0.1) / math.sqrt(k) * np.sin(k * phi + rng.uniform(0, 6.3)).astype(
                np.float32)
        t = np.sqrt(dx * dx + dy * dy) / rphi
        inside = t < 1
        z = np.sqrt(np.clip(1 - t * t, 0, 1))
        top = rng.uniform(10, 60) + z * radius * 0.8
        sl = (slice(y0, y1), slice(x0, x1))
        win = inside & (top > self.tree_top[sl])
        if not win.any():
            return False
        nx, ny = dx / rphi, dy / rphi
        lam = np.clip(nx * self.light[0] + ny * self.light[1] + z * self.light[2], 0, 1)
        shade = 0.42 + 0.78 * lam
        tone = (46, 78, 40) if rng.random() < 0.6 else ((62, 86, 44) if rng.random() < 0.5 else (36, 66, 52))
        cid = self.colour(tone, 5)
        self.mat[sl][win] = TREE
        self.obj[sl][win] = cid
        self.tree_top[sl][win] = top[win]
        self.shade[sl][win] = shade[win]
        self.detail[sl][win] = 0.0
        off = self.sun * (radius * 0.9 + 20)
        centre = np.round((np.asarray(c) + off) * 16).astype(int)
        cv2.circle(self.shadow, tuple(int(q) for q in centre), int(radius * 0.95 * 16), 1, -1, cv2.LINE_8, 4)
        return True

    def build_trees(self):
        rng = self.rng
        for r in self.roads:  # street trees on the verges
            if r["verge"] < 30 or rng.random() < 0.25:
                continue
            d, n = r["d"], np.array([-r["d"][1], r["d"][0]])
            span = 1.2 * (self.h + self.w)
            for side in (-1, 1):
                t = -span / 2 + rng.uniform(0, 150)
                while t < span / 2:
                    pc = r["p"] + d * t + n * side * (r["wc"] / 2 + r["verge"] / 2)
                    if 0 <= pc[0] < self.w and 0 <= pc[1] < self.h and rng.random() < 0.8:
                        if self.mat[int(pc[1]), int(pc[0])] == VERGE:
                            self.crown(pc, rng.uniform(50, 85))
                    t += rng.uniform(170, 260)
        target = rng.uniform(0.09, 0.16)
        for _ in range(60):
            if self.frac((TREE,)) >= target:
                break
            c = self.random_point((GRASS, GRASS, YARD) if rng.random() < 0.2 else (GRASS,))
            if c is None:
                break
            base = rng.uniform(45, 110)
            for _ in range(rng.integers(1, 6)):
                pc = c + rng.normal(0, base * 0.8, 2)
                if 0 <= pc[0] < self.w and 0 <= pc[1] < self.h and self.mat[int(pc[1]), int(pc[0])] in (
                        GRASS, YARD, VERGE, TREE, SOIL):
                    self.crown(pc, base * rng.uniform(0.75, 1.2))

    # -- rendering ----------------------------------------------------------------------------------
    def render(self) -> np.ndarray:
        rng, h, w, mat = self.rng, self.h, self.w, self.mat
        fields = (
            rng.standard_normal((h, w), dtype=np.float32),
            _blurred(rng, h, w, 1.0),
            _lowres(rng, h, w, 4),
            _lowres(rng, h, w, 24),
            _lowres(rng, h, w, 96),
        )
        lum = self.detail.copy()
        for k, f in enumerate(fields):
            lum += _MAT_AMPS[mat, k] * f
        # joints of paving slabs on sidewalks and of small pavers in yards, aligned with the street grid
        ys, xs = np.nonzero(_lut((SIDEWALK, YARD))[mat])
        cu, su = math.cos(self.theta), math.sin(self.theta)
        pu, pv = xs * cu + ys * su, -xs * su + ys * cu
        side = mat[ys, xs] == SIDEWALK
        joint = np.where(side, (np.mod(pu, 40) < 2) | (np.mod(pv, 40) < 2),
                         (np.mod(pu, 14) < 1.5) | (np.mod(pv, 22) < 1.5))
        lum[ys, xs] -= np.where(joint, np.where(side, 16.0, 12.0), 0.0).astype(np.float32)
        colours = np.stack(self.colours).astype(np.float32)
        img = colours[self.obj]
        img += lum[..., None] * _MAT_TINT[mat]
        img *= self.shade[..., None]
        paint = (self.paint > 0) & _lut((ASPHALT, LOT))[mat]
        img[paint] = _PAINT_RGB + 0.5 * lum[paint][:, None]
        ground = _lut((0, 2, 4, 5))[_MAT_CLASS[mat]]
        shadow = cv2.GaussianBlur(self.shadow.astype(np.float32) * ground, (0, 0), 1.5)
        img *= 1 - shadow[..., None] * (1 - _SHADOW_RGB)
        light = 1 + 0.05 * _lowres(rng, h, w, 256)
        warm = rng.normal(0, 0.02)  # mild white-balance shift between tiles (warm <-> cool)
        balance = np.array([1 + warm, 1 + 0.3 * warm, 1 - warm], dtype=np.float32) * rng.uniform(0.94, 1.06)
        img *= light[..., None] * balance
        img = cv2.GaussianBlur(img, (0, 0), 0.7)
        img += 2.0 * rng.standard_normal(img.shape, dtype=np.float32)
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _blurred(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    f = cv2.GaussianBlur(rng.standard_normal((h, w), dtype=np.float32), (0, 0), sigma)
    return f / max(float(f.std()), 1e-6)


def _lowres(rng: np.random.Generator, h: int, w: int, scale: int) -> np.ndarray:
    """Smooth unit-variance noise with features of about ``scale`` px (bicubic upsampling)."""
    gh, gw = h // scale + 3, w // scale + 3
    small = rng.standard_normal((gh, gw), dtype=np.float32)
    f = cv2.resize(small, (gw * scale, gh * scale), interpolation=cv2.INTER_CUBIC)[:h, :w]
    return (f - f.mean()) / max(float(f.std()), 1e-6)


def render_synthetic_tile(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic scene: ``(image uint8 H×W×3 RGB, label uint8 H×W with ISPRS classes 0–5)``."""
    scene = _Scene(height, width, rng)
    scene.build_roads()
    scene.build_buildings()
    scene.build_parking()
    scene.build_clutter()
    scene.build_trees()
    scene.build_street_cars()
    image = scene.render()
    return image, _MAT_CLASS[scene.mat]


def erode_label(label: np.ndarray, radius: int = BOUNDARY_RADIUS, ignore_index: int = 255) -> np.ndarray:
    """ISPRS-style eroded labels: pixels within ``radius`` px (disk) of a class boundary become ignore."""
    r = np.arange(-radius, radius + 1)
    disk = ((r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius).astype(np.uint8)
    lo = cv2.erode(label, disk, borderType=cv2.BORDER_REPLICATE)
    hi = cv2.dilate(label, disk, borderType=cv2.BORDER_REPLICATE)
    return np.where(lo == hi, label, np.uint8(ignore_index)).astype(np.uint8)


def _geotags(tile_id: str) -> list[tuple]:
    """Minimal GeoTIFF tags: 5 cm pixels, a tie point per tile, ETRS89 / UTM 32N."""
    r, c = (int(x) for x in tile_id.split("_"))
    easting = 776_000.0 + (c - 7) * 6000 * GSD  # the real tiles are 6000 px = 300 m apart
    northing = 5_813_000.0 - (r - 2) * 6000 * GSD
    geokeys = (1, 1, 0, 4,  # version 1.1.0, 4 keys
               1024, 0, 1, 1,  # GTModelTypeGeoKey = ModelTypeProjected
               1025, 0, 1, 1,  # GTRasterTypeGeoKey = RasterPixelIsArea
               3072, 0, 1, EPSG,  # ProjectedCSTypeGeoKey
               3076, 0, 1, 9001)  # ProjLinearUnitsGeoKey = metre
    return [
        (33550, 12, 3, (GSD, GSD, 0.0), True),  # ModelPixelScaleTag
        (33922, 12, 6, (0.0, 0.0, 0.0, easting, northing, 0.0), True),  # ModelTiepointTag
        (34735, 3, len(geokeys), geokeys, True),  # GeoKeyDirectoryTag
    ]


def _write_tiff(path: Path, array: np.ndarray, tags: list[tuple], compress: bool) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tifffile.imwrite(tmp, np.ascontiguousarray(array), photometric="rgb", planarconfig="contig",
                         compression="zlib" if compress else None, metadata=None, extratags=tags)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _readme(seed: int, tiles: dict[str, tuple[int, int]]) -> str:
    lines = [
        "SYNTHETIC DATA - NOT ISPRS POTSDAM",
        "",
        "Written by rsseg (rsseg.data.synthetic.potsdam.write_synthetic_potsdam) so that the pipeline",
        "runs without the real data. Numbers measured on it say nothing about real performance.",
        "",
        f"seed: {seed}",
        "layout (official ISPRS Potsdam names):",
        f"  {IMAGE_DIR}/top_potsdam_{{r}}_{{c}}_RGB.tif                       RGB uint8 GeoTIFF, 5 cm, EPSG:{EPSG}",
        f"  {LABEL_DIR}/top_potsdam_{{r}}_{{c}}_label.tif                    RGB colour labels",
        f"  {ERODED_DIR}/top_potsdam_{{r}}_{{c}}_label_noBoundary.tif  labels, boundary (r={BOUNDARY_RADIUS} px) black",
        "colour code (RGB): " + ", ".join(f"{n} {rgb}" for n, rgb in zip(ISPRS_CLASSES, ISPRS_PALETTE, strict=True))
        + ", boundary (0, 0, 0)",
        "tiles (id: height x width):",
    ]
    lines += [f"  {tid}: {h} x {w}" for tid, (h, w) in tiles.items()]
    return "\n".join(lines) + "\n"


def write_synthetic_potsdam(dst: str | Path, seed: int = 0, tiles: dict | None = None) -> list[Path]:
    """Write a synthetic ISPRS Potsdam under ``dst`` in the official layout and return the written files.

    ``tiles`` maps tile ids ``"{r}_{c}"`` to ``(height, width)`` (default ``SYNTH_POTSDAM_TILES``).
    The returned list holds, per tile in order, the RGB image, the full label and the eroded label,
    followed by ``README_SYNTHETIC.txt``. Each file is written under a hidden temporary name and
    renamed into place, so an interrupted run never leaves a partial file under its final name.
    The same ``seed`` gives byte-identical files.
    """
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    tiles = dict(SYNTH_POTSDAM_TILES if tiles is None else tiles)
    for tile_id, size in tiles.items():
        if not _TILE_ID.match(str(tile_id)):
            raise ValueError(f"tile id {tile_id!r} is not of the form '<row>_<col>' (e.g. '2_10')")
        if len(size) != 2 or min(int(size[0]), int(size[1])) < 32:
            raise ValueError(f"tile {tile_id}: size must be (height, width) of at least 32 px, got {size!r}")
    dst = Path(dst)
    for sub in (IMAGE_DIR, LABEL_DIR, ERODED_DIR):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    def write_tile(tile_id: str, size: tuple[int, int]) -> list[Path]:
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(tile_id.encode())]))
        image, label = render_synthetic_tile(int(size[0]), int(size[1]), rng)
        tags = _geotags(tile_id)
        stem = f"top_potsdam_{tile_id}"
        files = (
            (dst / IMAGE_DIR / f"{stem}_RGB.tif", image, False),
            (dst / LABEL_DIR / f"{stem}_label.tif", encode_isprs_label(label), True),
            (dst / ERODED_DIR / f"{stem}_label_noBoundary.tif", encode_isprs_label(erode_label(label)), True),
        )
        for path, array, compress in files:
            _write_tiff(path, array, tags, compress)
        return [f[0] for f in files]

    # Tiles are independent (one generator each), so threads change nothing in the output; numpy and
    # OpenCV release the GIL for the heavy array work.
    workers = max(1, min(len(tiles), os.cpu_count() or 1, 4))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        per_tile = list(pool.map(write_tile, tiles.keys(), tiles.values()))
    written: list[Path] = [path for paths in per_tile for path in paths]
    readme = dst / "README_SYNTHETIC.txt"
    _write_text(readme, _readme(int(seed), tiles))
    written.append(readme)
    return written
