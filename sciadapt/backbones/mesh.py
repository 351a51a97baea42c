"""Icosahedral multi-mesh and grid<->mesh graphs for GraphCast-style models (numpy + scipy only).

The mesh follows GraphCast (Lam et al., Science 2023, supplement section 3):

* a regular icosahedron inscribed in the unit sphere is split ``refinement`` times, each triangle into
  four, the new vertices (edge midpoints) projected back onto the sphere. Refinement ``r`` has
  ``10 * 4**r + 2`` vertices and ``20 * 4**r`` faces; the vertices of level ``r`` are the first ones
  of level ``r + 1``, so every level indexes the finest vertex array;
* the **multi-mesh** has the finest level's vertices and the union of the edges of every level (both
  directions), so messages travel far in few steps;
* **grid -> mesh** edges join each grid point to every mesh vertex within ``radius`` (a chord length
  on the unit sphere; GraphCast uses 0.6 x the longest edge of the finest level);
* **mesh -> grid** edges join each grid point to the 3 vertices of the finest-level triangle that
  contains it (central projection).

Edge features are GraphCast's: the sender minus receiver position in a frame rotated so that the
receiver sits at latitude 0, longitude 0, and the length of that vector, all divided by a constant.
Node features are ``sin(lat), cos(lon), sin(lon)``.

Limited-area grids keep only the mesh vertices near the region (see :func:`build_graph`), so a
33 x 49 regional grid runs on a small mesh. Everything here is deterministic: the same grid and
settings give bit-identical arrays, cached in-process by :func:`build_graph`.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

#: Largest supported refinement (refinement 7 already has 163,842 vertices).
MAX_REFINEMENT = 8
_CHUNK = 65536  # grid points per vectorised containment test


@dataclass(frozen=True)
class TriangularMesh:
    """Vertices on the unit sphere ``(N, 3)`` and counter-clockwise (seen from outside) faces ``(F, 3)``."""

    vertices: np.ndarray
    faces: np.ndarray


def icosahedron() -> TriangularMesh:
    """The regular icosahedron inscribed in the unit sphere, oriented as GraphCast's.

    The 12 vertices are the cyclic permutations of ``(0, +-1, +-phi)``; faces are the vertex triples
    that are pairwise at edge distance, ordered counter-clockwise seen from outside. GraphCast then
    rotates about the y axis by half the supplement of the dihedral angle, which puts a face (not a
    vertex) on top; we do the same, so no mesh vertex sits on a pole.
    """
    phi = (1.0 + np.sqrt(5.0)) / 2.0
    verts = []
    for a in (1.0, -1.0):
        for b in (phi, -phi):
            verts += [(a, b, 0.0), (0.0, a, b), (b, 0.0, a)]
    v = np.asarray(verts, dtype=np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)

    # Edges are the vertex pairs at the shortest distance; faces the triples of mutual neighbours.
    dist = np.linalg.norm(v[:, None] - v[None], axis=-1)
    edge_len = dist[dist > 1e-9].min()
    adjacent = np.abs(dist - edge_len) < 1e-6
    faces = []
    n = len(v)
    for i in range(n):
        for j in range(i + 1, n):
            if not adjacent[i, j]:
                continue
            for k in range(j + 1, n):
                if adjacent[i, k] and adjacent[j, k]:
                    # outward normal: counter-clockwise seen from outside the sphere
                    if np.dot(np.cross(v[j] - v[i], v[k] - v[i]), v[i]) < 0:
                        faces.append((i, k, j))
                    else:
                        faces.append((i, j, k))
    dihedral = 2.0 * np.arcsin(phi / np.sqrt(3.0))
    angle = (np.pi - dihedral) / 2.0
    c, s = np.cos(angle), np.sin(angle)
    rot_y = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    # row vectors times the matrix: the transpose rotation, as GraphCast applies it
    return TriangularMesh(vertices=v @ rot_y, faces=np.asarray(faces, dtype=np.int64))


def split_faces(mesh: TriangularMesh) -> TriangularMesh:
    """Split every triangle into four, keeping the orientation; parent vertices keep their indices."""
    f = mesh.faces
    n = len(mesh.vertices)
    # the three edges of every face, as sorted vertex pairs: (F, 3, 2)
    pairs = np.stack([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]], axis=1)
    keys = np.sort(pairs, axis=-1).reshape(-1, 2)
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    mid = mesh.vertices[unique].mean(axis=1)
    mid /= np.linalg.norm(mid, axis=1, keepdims=True)
    child = (n + inverse.reshape(-1, 3)).astype(np.int64)  # (F, 3): midpoints of ab, bc, ca
    a, b, c = f[:, 0], f[:, 1], f[:, 2]
    ab, bc, ca = child[:, 0], child[:, 1], child[:, 2]
    faces = np.concatenate(
        [
            np.stack([a, ab, ca], axis=1),
            np.stack([ab, b, bc], axis=1),
            np.stack([ca, bc, c], axis=1),
            np.stack([ab, bc, ca], axis=1),
        ]
    )
    return TriangularMesh(vertices=np.concatenate([mesh.vertices, mid]), faces=faces)


@functools.lru_cache(maxsize=4)
def mesh_hierarchy(refinement: int) -> tuple[TriangularMesh, ...]:
    """Meshes of refinement ``0 .. refinement``, coarse to fine (cached; treat as read-only)."""
    if not 0 <= refinement <= MAX_REFINEMENT:
        raise ValueError(f"mesh refinement must be in [0, {MAX_REFINEMENT}], got {refinement}")
    meshes = [icosahedron()]
    for _ in range(refinement):
        meshes.append(split_faces(meshes[-1]))
    return tuple(meshes)


def faces_to_edges(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Directed edges ``a->b, b->c, c->a`` of every face; on a closed oriented surface each edge
    appears once per direction, so the result is symmetric."""
    senders = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2]])
    receivers = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0]])
    return senders, receivers


def multimesh_edges(meshes: tuple[TriangularMesh, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The union of every level's directed edges, indexing the finest vertices, sorted by receiver."""
    all_faces = np.concatenate([m.faces for m in meshes])
    s, r = faces_to_edges(all_faces)
    pairs = np.unique(np.stack([r, s], axis=1), axis=0)  # dedupe (a no-op for icosahedral levels)
    return pairs[:, 1], pairs[:, 0]


def latlon_to_xyz(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Degrees to unit vectors ``(..., 3)``; x points to (0N, 0E), z to the north pole."""
    la, lo = np.deg2rad(lat), np.deg2rad(lon)
    return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)


def xyz_to_latlon(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors to (latitude, longitude in [0, 360)) in degrees."""
    lat = np.rad2deg(np.arcsin(np.clip(xyz[..., 2], -1.0, 1.0)))
    lon = np.mod(np.rad2deg(np.arctan2(xyz[..., 1], xyz[..., 0])), 360.0)
    return lat, lon


def node_features(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """GraphCast's structural node features ``(N, 3)``: ``sin(lat), cos(lon), sin(lon)``."""
    la, lo = np.deg2rad(lat), np.deg2rad(lon)
    return np.stack([np.sin(la), np.cos(lo), np.sin(lo)], axis=-1)


def _to_receiver_frames(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Rotations ``(N, 3, 3)`` taking each point to (lat 0, lon 0) while keeping north up:
    a rotation about z by ``-lon``, then about y by ``+lat``."""
    a, b = -np.deg2rad(lon), np.deg2rad(lat)
    ca, sa, cb, sb = np.cos(a), np.sin(a), np.cos(b), np.sin(b)
    zero, one = np.zeros_like(a), np.ones_like(a)
    rz = np.stack([np.stack([ca, -sa, zero], -1), np.stack([sa, ca, zero], -1), np.stack([zero, zero, one], -1)], -2)
    ry = np.stack([np.stack([cb, zero, sb], -1), np.stack([zero, one, zero], -1), np.stack([-sb, zero, cb], -1)], -2)
    return np.asarray(ry @ rz)  # (N, 3, 3)


def edge_features(
    sender_xyz: np.ndarray,
    receiver_xyz: np.ndarray,
    receiver_lat: np.ndarray,
    receiver_lon: np.ndarray,
    senders: np.ndarray,
    receivers: np.ndarray,
    scale: float,
) -> np.ndarray:
    """GraphCast's edge features ``(E, 4)``: ``[|d|, d_x, d_y, d_z] / scale`` with ``d`` the sender
    minus the receiver position in the receiver's local frame (receiver at lat 0, lon 0)."""
    frames = _to_receiver_frames(receiver_lat, receiver_lon)[receivers]  # (E, 3, 3)
    d = np.einsum("eij,ej->ei", frames, sender_xyz[senders] - receiver_xyz[receivers])
    length = np.linalg.norm(d, axis=-1, keepdims=True)
    return np.concatenate([length, d], axis=-1) / scale


def radius_edges(grid_xyz: np.ndarray, mesh_xyz: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Grid->mesh edges: every mesh vertex within chord distance ``radius`` of a grid point.

    A grid point with no vertex in range (only with a small radius factor) is joined to its nearest
    vertex, so every grid point feeds the mesh. Returns ``(grid_index, mesh_index)`` sorted by mesh.
    """
    pairs = cKDTree(grid_xyz).sparse_distance_matrix(cKDTree(mesh_xyz), radius, output_type="ndarray")
    g, m = pairs["i"].astype(np.int64), pairs["j"].astype(np.int64)
    lonely = np.setdiff1d(np.arange(len(grid_xyz)), g)
    if len(lonely):
        _, nearest = cKDTree(mesh_xyz).query(grid_xyz[lonely], k=1)
        g = np.concatenate([g, lonely])
        m = np.concatenate([m, np.asarray(nearest, dtype=np.int64)])
    order = np.lexsort((g, m))
    return g[order], m[order]


def containing_faces(points: np.ndarray, mesh: TriangularMesh) -> np.ndarray:
    """Index of the face whose central projection contains each unit vector ``(P,)``.

    Candidates are the faces with the nearest centroids; a face ``(a, b, c)`` (counter-clockwise
    from outside) contains direction ``p`` when ``p`` is on the inner side of the three planes
    through the origin and each edge. Points on a shared edge take the first candidate.
    """
    v, f = mesh.vertices, mesh.faces
    centroids = v[f].mean(axis=1)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    tree = cKDTree(centroids)
    out = np.full(len(points), -1, dtype=np.int64)
    for start in range(0, len(points), _CHUNK):
        stop = min(start + _CHUNK, len(points))
        out[start:stop] = _containing_faces_chunk(points[start:stop], v, f, tree)
    return out


def _containing_faces_chunk(points: np.ndarray, v: np.ndarray, f: np.ndarray, tree: cKDTree) -> np.ndarray:
    """:func:`containing_faces` for one chunk of points (bounds the ``(P, k, 3, 3)`` temporaries)."""
    out = np.full(len(points), -1, dtype=np.int64)
    todo = np.arange(len(points))
    k = 6
    while len(todo):
        k = min(k, len(f))
        _, cand = tree.query(points[todo], k=k)
        cand = cand.reshape(len(todo), k)
        tri = v[f[cand]]  # (P, k, 3 vertices, 3)
        p = points[todo][:, None, :]
        tol = -1e-12
        inside = (
            (np.einsum("pkc,pkc->pk", np.cross(tri[:, :, 0], tri[:, :, 1]), p) >= tol)
            & (np.einsum("pkc,pkc->pk", np.cross(tri[:, :, 1], tri[:, :, 2]), p) >= tol)
            & (np.einsum("pkc,pkc->pk", np.cross(tri[:, :, 2], tri[:, :, 0]), p) >= tol)
        )
        found = inside.any(axis=1)
        out[todo[found]] = cand[found, inside[found].argmax(axis=1)]
        todo = todo[~found]
        if k == len(f):  # cannot happen on a closed mesh; fail loudly rather than guess
            if len(todo):
                raise RuntimeError(f"{len(todo)} grid points lie in no mesh triangle")
            break
        k *= 4
    return out


def chord(degrees: float) -> float:
    """Chord length on the unit sphere of a great-circle angle in degrees."""
    return float(2.0 * np.sin(np.deg2rad(min(degrees, 180.0)) / 2.0))


def grid_cell_diagonal(lat: np.ndarray, lon: np.ndarray) -> float:
    """An upper bound (chord) on the diagonal of a grid cell: the largest latitude step and the largest
    longitude step, where the widest longitude gap is taken as outside the region (for a global
    grid every gap is equal, so dropping one changes nothing)."""
    dlat = float(np.abs(np.diff(np.sort(lat))).max()) if len(lat) > 1 else 0.0
    lons = np.unique(np.mod(lon, 360.0))
    if len(lons) > 1:
        gaps = np.diff(np.concatenate([lons, lons[:1] + 360.0]))
        dlon = float(np.sort(gaps)[:-1].max())
    else:
        dlon = 0.0
    return chord(float(np.hypot(dlat, dlon)))


@dataclass(frozen=True)
class GridMeshGraph:
    """Everything the model needs about the graphs, as numpy arrays (edges sorted by receiver).

    Attributes:
        grid_shape: ``(H, W)``.
        refinement: Mesh refinement level.
        n_mesh_full: Vertices of the global multi-mesh before pruning to the region.
        mesh_index: Indices of the kept vertices in the global multi-mesh ``(M,)``.
        grid_nodes: Grid node features ``(H * W, 3)``.
        mesh_nodes: Mesh node features ``(M, 3)``.
        g2m_senders, g2m_receivers, g2m_features: grid->mesh edges (grid index, mesh index, ``(E, 4)``).
        mesh_senders, mesh_receivers, mesh_features: multi-mesh edges among the kept vertices.
        m2g_senders, m2g_receivers, m2g_features: mesh->grid edges (mesh index, grid index), 3 per grid point.
        radius: The grid->mesh query radius (chord on the unit sphere).
        signature: A digest of the grid coordinates and the graph settings.
    """

    grid_shape: tuple[int, int]
    refinement: int
    n_mesh_full: int
    mesh_index: np.ndarray
    grid_nodes: np.ndarray
    mesh_nodes: np.ndarray
    g2m_senders: np.ndarray
    g2m_receivers: np.ndarray
    g2m_features: np.ndarray
    mesh_senders: np.ndarray
    mesh_receivers: np.ndarray
    mesh_features: np.ndarray
    m2g_senders: np.ndarray
    m2g_receivers: np.ndarray
    m2g_features: np.ndarray
    radius: float
    signature: str

    @property
    def n_mesh(self) -> int:
        return len(self.mesh_index)

    def summary(self) -> str:
        h, w = self.grid_shape
        return (
            f"grid {h}x{w}, mesh refinement {self.refinement}: {self.n_mesh}/{self.n_mesh_full} mesh nodes, "
            f"{len(self.mesh_senders)} multi-mesh edges, {len(self.g2m_senders)} grid->mesh and "
            f"{len(self.m2g_senders)} mesh->grid edges"
        )


def grid_signature(lat: tuple[float, ...], lon: tuple[float, ...], refinement: int, radius_factor: float) -> str:
    """A stable hex digest of the grid coordinates (longitudes modulo 360) and the graph settings."""
    h = hashlib.sha256()
    h.update(np.round(np.asarray(lat, dtype=np.float64), 6).tobytes())
    h.update(np.mod(np.round(np.asarray(lon, dtype=np.float64), 6), 360.0).tobytes())
    h.update(f"r={refinement};f={radius_factor:.6g}".encode())
    return h.hexdigest()


@functools.lru_cache(maxsize=4)
def build_graph(
    lat: tuple[float, ...], lon: tuple[float, ...], refinement: int, radius_factor: float = 0.6
) -> GridMeshGraph:
    """Build the grid->mesh, multi-mesh and mesh->grid graphs of a regular lat-lon grid.

    Grid point ``(i, j)`` is ``(lat[i], lon[j])``, flattened row-major (index ``i * W + j``).
    Longitudes are taken modulo 360, so ``[-180, 180)`` and ``[0, 360)`` give the same geometry.

    Mesh vertices farther than ``radius + one grid-cell diagonal`` from every grid point are dropped,
    together with their edges, unless they are a corner of a triangle holding a grid point. On a
    global grid nothing is dropped; on a limited-area grid the mesh shrinks to the region plus a
    ``radius`` margin. (The extra cell diagonal keeps the vertices between the points of a grid
    coarser than the mesh, which a plain "within radius" rule would punch out of a global mesh.)

    Edge features are divided by constants of the mesh rather than of the pruned graph (upstream
    divides by the longest edge present), so a regional graph sees the same scale as a global one:
    the longest multi-mesh edge (level 0) for mesh edges, ``radius`` for grid->mesh edges and the
    longest finest-level edge for mesh->grid edges.

    Args:
        lat: Latitudes in degrees ``(H,)``.
        lon: Longitudes in degrees ``(W,)``.
        refinement: Icosahedron splits (GraphCast: 6).
        radius_factor: Grid->mesh radius as a fraction of the longest finest-level edge (GraphCast: 0.6).

    Returns:
        The graphs (cached per argument tuple; do not modify the arrays).
    """
    # rounding to 1e-9 deg (0.1 mm) makes lon and lon + 360 give bit-identical graphs
    lat_a = np.round(np.asarray(lat, dtype=np.float64), 9)
    lon_a = np.mod(np.round(np.mod(np.asarray(lon, dtype=np.float64), 360.0), 9), 360.0)
    meshes = mesh_hierarchy(refinement)
    finest = meshes[-1]
    mesh_xyz = finest.vertices
    n_full = len(mesh_xyz)

    grid_lat = np.repeat(lat_a, len(lon_a))
    grid_lon = np.tile(lon_a, len(lat_a))
    grid_xyz = latlon_to_xyz(grid_lat, grid_lon)

    fs, fr = faces_to_edges(finest.faces)
    finest_edge = float(np.linalg.norm(mesh_xyz[fs] - mesh_xyz[fr], axis=1).max())
    radius = radius_factor * finest_edge
    ms, mr = multimesh_edges(meshes)
    longest_mesh_edge = float(np.linalg.norm(mesh_xyz[ms] - mesh_xyz[mr], axis=1).max())

    g2m_g, g2m_m = radius_edges(grid_xyz, mesh_xyz, radius)
    tri = finest.faces[containing_faces(grid_xyz, finest)]  # (G, 3)

    # keep the vertices near the region (all of them on a global grid)
    near, _ = cKDTree(grid_xyz).query(mesh_xyz, k=1)
    keep = near <= radius + grid_cell_diagonal(lat_a, lon_a)
    keep[g2m_m] = True
    keep[tri.ravel()] = True
    mesh_index = np.flatnonzero(keep)
    new_id = np.full(n_full, -1, dtype=np.int64)
    new_id[mesh_index] = np.arange(len(mesh_index))

    both = keep[ms] & keep[mr]
    ms, mr = new_id[ms[both]], new_id[mr[both]]
    g2m_m = new_id[g2m_m]
    m2g_m = new_id[tri.ravel()]
    m2g_g = np.repeat(np.arange(len(grid_xyz), dtype=np.int64), 3)

    kept_xyz = mesh_xyz[mesh_index]
    mesh_lat, mesh_lon = xyz_to_latlon(kept_xyz)
    g2m_feat = edge_features(grid_xyz, kept_xyz, mesh_lat, mesh_lon, g2m_g, g2m_m, radius)
    mesh_feat = edge_features(kept_xyz, kept_xyz, mesh_lat, mesh_lon, ms, mr, longest_mesh_edge)
    m2g_feat = edge_features(kept_xyz, grid_xyz, grid_lat, grid_lon, m2g_m, m2g_g, finest_edge)

    return GridMeshGraph(
        grid_shape=(len(lat_a), len(lon_a)),
        refinement=refinement,
        n_mesh_full=n_full,
        mesh_index=mesh_index,
        grid_nodes=node_features(grid_lat, grid_lon).astype(np.float32),
        mesh_nodes=node_features(mesh_lat, mesh_lon).astype(np.float32),
        g2m_senders=g2m_g,
        g2m_receivers=g2m_m,
        g2m_features=g2m_feat.astype(np.float32),
        mesh_senders=ms,
        mesh_receivers=mr,
        mesh_features=mesh_feat.astype(np.float32),
        m2g_senders=m2g_m,
        m2g_receivers=m2g_g,
        m2g_features=m2g_feat.astype(np.float32),
        radius=radius,
        signature=grid_signature(lat, lon, refinement, radius_factor),
    )
