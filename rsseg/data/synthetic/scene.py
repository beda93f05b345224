"""A procedural suburban scene at ~5 cm GSD, shared by rsseg's synthetic datasets.

A scene is drawn first as a *material* map (asphalt, sidewalk, paved yard, parking lot, roof, lawn,
verge, tree crown, car, soil, rubble, water, bins), which fixes every label before any pixel colour
exists; the image is then rendered from that map: per-object base colours, per-material texture from
multi-scale noise, geometric shading (roof facets, tree domes, car windows), lane marks, cast shadows,
and mild global illumination, blur and noise. Each synthetic dataset maps materials to its own classes
(``MATERIAL_NAMES`` lists them), so image and label agree pixel for pixel in every dataset.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["MATERIAL_ISPRS_CLASS", "MATERIAL_NAMES", "render_scene"]

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
MATERIAL_ISPRS_CLASS = np.array([m[1] for m in _MATERIALS], dtype=np.uint8)
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
            vents = self.rng.integers(0, 4) if min(length, width) > 80 else 0  # narrow roofs have none
            for _ in range(vents):  # vents / skylights / HVAC boxes
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
        ground = _lut((0, 2, 4, 5))[MATERIAL_ISPRS_CLASS[mat]]
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



MATERIAL_NAMES = tuple(m[0] for m in _MATERIALS)


def render_scene(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``(image uint8 H×W×3 RGB, material index map uint8 H×W)``; see ``MATERIAL_NAMES``."""
    scene = _Scene(height, width, rng)
    scene.build_roads()
    scene.build_buildings()
    scene.build_parking()
    scene.build_clutter()
    scene.build_trees()
    scene.build_street_cars()
    return scene.render(), scene.mat

