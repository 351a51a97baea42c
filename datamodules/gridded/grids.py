"""Grids of any kind: regular latitude-longitude, projected x/y with a CRS, curvilinear 2-D lat/lon.

A store's grid is told from its dimensions and CF metadata only:

* ``latlon``: 1-D ``latitude``/``lat`` and ``longitude``/``lon`` dimensions (area weights cos-latitude).
* ``projected``: ``y``/``x`` dimensions (or CF ``projection_y/x_coordinate`` axes) and a CRS: the
  CF ``grid_mapping`` variable (``crs_wkt``, ``spatial_ref``, ``proj4`` or its CF parameters), a
  ``crs``/``proj4`` attribute, or ``data.crs`` / ``--crs``. Area weights are the cells' true area,
  ``dx * dy / areal scale factor`` of the projection at each cell centre (pyproj), and the cells'
  latitude/longitude come from the CRS.
* ``curvilinear``: row/column dimensions without a CRS but with 2-D latitude/longitude variables;
  area weights are the spherical areas of the cells, whose corners are interpolated between the
  centres (and extrapolated at the edges).

Every weight array is normalised to mean 1.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np
import xarray as xr

from sciadapt.errors import DataError

_Y_DIMS = ("y", "yc", "rlat", "south_north", "nj", "j", "row")
_X_DIMS = ("x", "xc", "rlon", "west_east", "ni", "i", "col")
_LAT_NAMES = ("latitude", "lat", "nav_lat", "XLAT")
_LON_NAMES = ("longitude", "lon", "nav_lon", "XLONG")
_CRS_ATTRS = ("crs_wkt", "spatial_ref", "proj4", "proj4text", "proj4_params", "projection", "crs")
GRID_MAPPING = "crs"  # the name prepared stores give their CF grid-mapping variable
CRS_HINT = (
    "Fix: give the CRS, e.g. `sciadapt data prepare ... --crs EPSG:3035` or data.crs='EPSG:3035' (any pyproj string)"
)


@dataclasses.dataclass
class Grid:
    """The horizontal grid of a store.

    Attributes:
        kind: ``"latlon"``, ``"projected"`` or ``"curvilinear"``.
        row_dim / col_dim: The dimensions of rows (latitude, y) and columns (longitude, x).
        crs_wkt: The projection as WKT (projected grids), else None.
        lat2d / lon2d: ``(H, W)`` cell-centre latitude/longitude in degrees, store orientation
            (projected and curvilinear grids), else None.
        mapping_name: The store's grid-mapping variable (not a field to train on), if any.
    """

    kind: str
    row_dim: str
    col_dim: str
    crs_wkt: str | None = None
    lat2d: np.ndarray | None = None
    lon2d: np.ndarray | None = None
    mapping_name: str | None = None


def parse_crs(text: str, source: str) -> Any:
    """A ``pyproj.CRS`` from any string pyproj reads (EPSG code, proj4, WKT); DataError otherwise."""
    try:
        import pyproj
    except ImportError as err:  # pragma: no cover - torchgeo brings pyproj
        raise DataError(f"{source}: projected grids need pyproj. Fix: pip install pyproj") from err
    try:
        return pyproj.CRS.from_user_input(text)
    except pyproj.exceptions.CRSError as err:
        raise DataError(f"{source}: cannot read the CRS {text!r}: {err}. {CRS_HINT}") from err


def _find(ds: xr.Dataset, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in ds.dims), None)


def _mapping_variable(ds: xr.Dataset) -> str | None:
    """The CF grid-mapping variable named by the data variables (``grid_mapping`` attribute)."""
    for var in ds.data_vars.values():
        name = var.attrs.get("grid_mapping", var.encoding.get("grid_mapping"))
        if isinstance(name, str) and name.split(":")[0].strip() in ds.variables:
            return name.split(":")[0].strip()
    return GRID_MAPPING if GRID_MAPPING in ds.variables and ds[GRID_MAPPING].ndim == 0 else None


def crs_from_dataset(ds: xr.Dataset, source: str) -> tuple[Any, str | None]:
    """The CRS a dataset declares (grid-mapping variable, then global attributes) and that variable's name."""
    import pyproj

    mapping = _mapping_variable(ds)
    candidates: list[dict[str, Any]] = []
    if mapping is not None:
        candidates.append(dict(ds[mapping].attrs))
    candidates.append(dict(ds.attrs))
    for attrs in candidates:
        for key in _CRS_ATTRS:
            value = attrs.get(key)
            if isinstance(value, bytes):
                value = value.decode()
            if isinstance(value, str) and value.strip():
                return parse_crs(value, f"{source} (attribute {key!r})"), mapping
        if "grid_mapping_name" in attrs:
            try:
                return pyproj.CRS.from_cf(attrs), mapping
            except pyproj.exceptions.CRSError as err:
                raise DataError(
                    f"{source}: the grid mapping {mapping!r} cannot be read as a CRS ({err}). {CRS_HINT}"
                ) from err
    return None, mapping


def _geographic(crs: Any) -> bool:
    return bool(crs.is_geographic)


def detect_grid(ds: xr.Dataset, source: str, crs: str | None = None) -> Grid | None:
    """The grid of ``ds``; None when it has neither lat/lon nor row/column dimensions.

    Args:
        ds: The opened store (metadata and the 2-D coordinates are read).
        source: How messages name the store.
        crs: A CRS given by the user (``data.crs`` / ``--crs``); it wins over the file's.

    Raises:
        DataError: A projected grid without any CRS, or an unreadable CRS.
    """
    lat_dim, lon_dim = _find(ds, ("latitude", "lat")), _find(ds, ("longitude", "lon"))
    if lat_dim is not None and lon_dim is not None and crs is None:
        return Grid("latlon", lat_dim, lon_dim)
    row = lat_dim or _find(ds, _Y_DIMS) or _axis_dim(ds, "Y")
    col = lon_dim or _find(ds, _X_DIMS) or _axis_dim(ds, "X")
    if row is None or col is None:
        return None
    declared, mapping = crs_from_dataset(ds, source)
    given = parse_crs(crs, f"{source} (data.crs / --crs)") if crs is not None else declared
    lat2d, lon2d = _latlon_2d(ds, row, col)
    if given is not None:
        if _geographic(given) and lat_dim is not None:
            return Grid("latlon", row, col, mapping_name=mapping)
        if row not in ds.coords or col not in ds.coords:
            raise DataError(
                f"{source}: a projected grid needs its {row!r} and {col!r} coordinates (the cell centres in the "
                "projection's units). Fix: add them (ds.assign_coords) and re-create the store"
            )
        y, x = np.asarray(ds[row].values, np.float64), np.asarray(ds[col].values, np.float64)
        if lat2d is None:
            lat2d, lon2d = latlon_of(given, x, y)
        return Grid("projected", row, col, given.to_wkt(), lat2d, lon2d, mapping)
    if lat2d is not None:
        return Grid("curvilinear", row, col, None, lat2d, lon2d, mapping)
    raise DataError(
        f"{source}: the grid has {row!r}/{col!r} dimensions but no CRS (no CF grid_mapping variable, no "
        f"crs_wkt/proj4 attribute) and no 2-D latitude/longitude variables, so its cells cannot be placed. {CRS_HINT}"
    )


def _axis_dim(ds: xr.Dataset, axis: str) -> str | None:
    std = {"Y": "projection_y_coordinate", "X": "projection_x_coordinate"}[axis]
    for name in ds.dims:
        if name in ds.coords and (ds[name].attrs.get("axis") == axis or ds[name].attrs.get("standard_name") == std):
            return str(name)
    return None


def _latlon_2d(ds: xr.Dataset, row: str, col: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    found: dict[str, np.ndarray] = {}
    for what, names, std in (("lat", _LAT_NAMES, "latitude"), ("lon", _LON_NAMES, "longitude")):
        cands = [n for n in names if n in ds.variables] + [
            str(n) for n, v in ds.variables.items() if v.attrs.get("standard_name") == std
        ]
        for name in cands:
            var = ds[name]
            if set(var.dims) == {row, col}:
                found[what] = np.asarray(var.transpose(row, col).values, np.float64)
                break
    if len(found) != 2:
        return None, None
    return found["lat"], found["lon"]


def latlon_of(crs: Any, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(H, W)`` latitude and longitude (degrees) of the cell centres ``y`` x ``x`` of a projection."""
    import pyproj

    to_geo = pyproj.Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True)
    xx, yy = np.meshgrid(x, y)
    lon, lat = to_geo.transform(xx, yy)
    return np.asarray(lat, np.float64), np.asarray(lon, np.float64)


def _mean_one(w: np.ndarray) -> np.ndarray:
    w = np.where(np.isfinite(w), np.clip(w, 0.0, None), 0.0)
    return w / float(w.mean())


def projected_area_weights(
    crs_wkt: str, x: np.ndarray, y: np.ndarray, lat2d: np.ndarray, lon2d: np.ndarray
) -> np.ndarray:
    """``(H, W)`` weights proportional to each cell's area on the Earth, mean 1.

    A cell covers ``|dx * dy|`` in the projection's plane; the projection's areal scale factor
    ``k`` at its centre (``pyproj.Proj.get_factors``) turns that into ``|dx * dy| / k`` on the
    ellipsoid (the KNMI composite's 1 km cells, polar stereographic true at 60N, cover 0.88 km2
    in the south to 0.96 km2 in the north).
    """
    import pyproj

    crs = pyproj.CRS.from_wkt(crs_wkt)
    factors = pyproj.Proj(crs).get_factors(lon2d, lat2d)
    dy = np.abs(np.gradient(y)) if len(y) > 1 else np.ones(1)
    dx = np.abs(np.gradient(x)) if len(x) > 1 else np.ones(1)
    area = dy[:, None] * dx[None, :] / np.asarray(factors.areal_scale, np.float64)
    return _mean_one(area)


def _unit_vectors(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    la, lo = np.deg2rad(lat), np.deg2rad(lon)
    return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)


def _reflect(edge: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The point as far beyond ``edge`` on the great circle through ``inner`` and ``edge`` (unit vectors)."""
    out: np.ndarray = 2.0 * np.einsum("...i,...i", edge, inner)[..., None] * edge - inner
    return out


def _corners(v: np.ndarray) -> np.ndarray:
    """``(H+1, W+1, 3)`` cell corners from ``(H, W, 3)`` centres: normalised means of the four
    neighbouring centres, with a ring of ghost centres mirrored across the edges along great circles."""
    p = np.pad(v, ((1, 1), (1, 1), (0, 0)), mode="edge")
    if v.shape[0] > 1:
        p[0, 1:-1] = _reflect(v[0], v[1])
        p[-1, 1:-1] = _reflect(v[-1], v[-2])
    if v.shape[1] > 1:
        p[:, 0] = _reflect(p[:, 1], p[:, 2])
        p[:, -1] = _reflect(p[:, -2], p[:, -3])
    c = 0.25 * (p[:-1, :-1] + p[1:, :-1] + p[:-1, 1:] + p[1:, 1:])
    out: np.ndarray = c / np.linalg.norm(c, axis=-1, keepdims=True)
    return out


def _triangle_area(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Spherical excess of unit-sphere triangles (Van Oosterom and Strackee)."""
    num = np.abs(np.einsum("...i,...i", a, np.cross(b, c)))
    den = 1.0 + np.einsum("...i,...i", a, b) + np.einsum("...i,...i", b, c) + np.einsum("...i,...i", c, a)
    out: np.ndarray = 2.0 * np.arctan2(num, den)
    return out


def curvilinear_area_weights(lat2d: np.ndarray, lon2d: np.ndarray) -> np.ndarray:
    """``(H, W)`` weights proportional to the spherical area of each cell, mean 1.

    The corners of a cell are the normalised means of the unit vectors of the four centres around
    them; a cell's area is that of its two spherical triangles.
    """
    c = _corners(_unit_vectors(lat2d, lon2d))  # (H+1, W+1, 3)
    a, b, d, e = c[:-1, :-1], c[:-1, 1:], c[1:, 1:], c[1:, :-1]
    return _mean_one(_triangle_area(a, b, d) + _triangle_area(a, d, e))


def crs_attrs(crs_wkt: str) -> dict[str, Any]:
    """The attributes of a CF grid-mapping variable for ``crs_wkt`` (CF parameters, WKT and proj4)."""
    import pyproj

    crs = pyproj.CRS.from_wkt(crs_wkt)
    attrs: dict[str, Any] = {}
    try:
        attrs.update({k: v for k, v in crs.to_cf().items() if isinstance(v, str | int | float)})
    except Exception:  # not every CRS has a CF form; the WKT below always says it
        pass
    attrs["crs_wkt"] = crs_wkt
    attrs["spatial_ref"] = crs_wkt
    with warnings.catch_warnings():  # "you will likely lose information": the WKT above keeps it all
        warnings.simplefilter("ignore", UserWarning)
        attrs["proj4"] = crs.to_proj4()
    return attrs
