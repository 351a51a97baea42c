"""GraphCast-style mesh backbone: mesh geometry, grid<->mesh graphs, shapes, checkpoints."""

from __future__ import annotations

import fnmatch

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from sciadapt.backbones import mesh
from sciadapt.backbones.graphcast import GraphCast, build_graphcast_tiny
from sciadapt.errors import CheckpointError, ConfigError, ShapeError
from sciadapt.registry import BACKBONES

UK_LAT = [58.0 - 0.25 * i for i in range(33)]
UK_LON = [-10.0 + 0.25 * j for j in range(49)]
GLOBAL_LAT = [90.0 - 3.0 * i for i in range(61)]
GLOBAL_LON = [3.0 * j for j in range(120)]
SMALL_LAT = [80.0 - 20.0 * i for i in range(9)]  # a coarse global grid for fast model tests
SMALL_LON = [20.0 * j for j in range(18)]


def tiny(**kwargs: object) -> GraphCast:
    settings: dict[str, object] = {"lat": SMALL_LAT, "lon": SMALL_LON, "n_channels": 2, "n_forcings": 1, "n_static": 1}
    settings.update(kwargs)
    torch.manual_seed(0)
    return build_graphcast_tiny(**settings)  # type: ignore[arg-type]


def inputs(model: GraphCast, batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, w = model.grid_shape
    x = torch.randn(batch, model.n_input, model.n_channels, h, w, generator=g)
    f = torch.randn(batch, (model.n_input + 1) * model.n_forcings, h, w, generator=g)
    s = torch.randn(1, model.n_static, h, w, generator=g)
    return x, f, s


# -- mesh -------------------------------------------------------------------------------------
@pytest.mark.parametrize("refinement", [0, 1, 2, 3, 4])
def test_mesh_counts_per_refinement(refinement: int) -> None:
    levels = mesh.mesh_hierarchy(refinement)
    assert len(levels) == refinement + 1
    for r, m in enumerate(levels):
        assert m.vertices.shape == (10 * 4**r + 2, 3)
        assert m.faces.shape == (20 * 4**r, 3)
        np.testing.assert_allclose(np.linalg.norm(m.vertices, axis=1), 1.0, atol=1e-12)
        # counter-clockwise seen from outside: the normal points away from the centre
        v = m.vertices[m.faces]
        normals = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
        assert (np.einsum("fc,fc->f", normals, v.mean(axis=1)) > 0).all()
        if r:  # coarser vertices keep their indices
            np.testing.assert_array_equal(levels[r - 1].vertices, m.vertices[: len(levels[r - 1].vertices)])
    senders, receivers = mesh.multimesh_edges(levels)
    # every level contributes its 30 * 4**r undirected edges in both directions, none shared
    assert len(senders) == sum(60 * 4**r for r in range(refinement + 1))
    forward = set(zip(senders.tolist(), receivers.tolist(), strict=True))
    assert forward == {(r, s) for s, r in forward}
    assert all(s != r for s, r in forward)


def test_mesh_has_no_vertex_on_a_pole() -> None:
    lat, _ = mesh.xyz_to_latlon(mesh.icosahedron().vertices)
    assert np.abs(lat).max() < 60.0


@pytest.mark.parametrize(("lat", "lon", "refinement"), [(GLOBAL_LAT, GLOBAL_LON, 2), (UK_LAT, UK_LON, 4)])
def test_grid_mesh_connectivity(lat: list[float], lon: list[float], refinement: int) -> None:
    g = mesh.build_graph(tuple(lat), tuple(lon), refinement, 0.6)
    n_grid = len(lat) * len(lon)
    # grid -> mesh: every grid point feeds at least one mesh node, all within the radius
    assert np.bincount(g.g2m_senders, minlength=n_grid).min() >= 1
    grid_xyz = mesh.latlon_to_xyz(np.repeat(lat, len(lon)), np.tile(lon, len(lat)))
    mesh_xyz = mesh.mesh_hierarchy(refinement)[-1].vertices[g.mesh_index]
    dist = np.linalg.norm(grid_xyz[g.g2m_senders] - mesh_xyz[g.g2m_receivers], axis=1)
    assert dist.max() <= g.radius + 1e-12
    # mesh -> grid: exactly 3 distinct senders per grid point, the corners of a triangle holding it
    assert np.bincount(g.m2g_receivers, minlength=n_grid).tolist() == [3] * n_grid
    corners = mesh_xyz[g.m2g_senders.reshape(n_grid, 3)]  # (G, 3, 3)
    assert (np.diff(np.sort(g.m2g_senders.reshape(n_grid, 3), axis=1), axis=1) > 0).all()
    solve = np.linalg.solve(np.transpose(corners, (0, 2, 1)), grid_xyz[..., None])[..., 0]
    assert (solve >= -1e-9).all(), "a grid point lies outside the cone of its triangle"
    # edge features are bounded by their normalisation constants
    for feats in (g.g2m_features, g.mesh_features, g.m2g_features):
        assert np.abs(feats).max() <= 1.0 + 1e-9


def test_small_radius_still_connects_every_grid_point() -> None:
    g = mesh.build_graph(tuple(GLOBAL_LAT), tuple(GLOBAL_LON), 3, 0.05)
    assert np.bincount(g.g2m_senders, minlength=61 * 120).min() >= 1


def test_regional_grid_keeps_a_small_mesh() -> None:
    glob = mesh.build_graph(tuple(GLOBAL_LAT), tuple(GLOBAL_LON), 4, 0.6)
    assert glob.n_mesh == glob.n_mesh_full == 2562  # nothing pruned on a global grid
    assert len(glob.mesh_senders) == sum(60 * 4**r for r in range(5))
    uk = mesh.build_graph(tuple(UK_LAT), tuple(UK_LON), 4, 0.6)
    assert uk.n_mesh_full == 2562 and uk.n_mesh < 0.02 * uk.n_mesh_full
    for idx, size in (
        (uk.g2m_receivers, uk.n_mesh),
        (uk.m2g_senders, uk.n_mesh),
        (uk.mesh_senders, uk.n_mesh),
        (uk.mesh_receivers, uk.n_mesh),
    ):
        assert idx.min() >= 0 and idx.max() < size
    # kept nodes lie over the region (within a few degrees of the UK box)
    lat, lon = mesh.xyz_to_latlon(mesh.mesh_hierarchy(4)[-1].vertices[uk.mesh_index])
    assert 40 < lat.min() and lat.max() < 68
    assert ((lon > 340) | (lon < 15)).all()


def test_graph_is_deterministic_and_longitude_convention_free() -> None:
    a = mesh.build_graph(tuple(UK_LAT), tuple(UK_LON), 3, 0.6)
    mesh.build_graph.cache_clear()
    b = mesh.build_graph(tuple(UK_LAT), tuple(v + 360.0 for v in UK_LON), 3, 0.6)
    assert a.signature == b.signature
    for name in ("g2m_senders", "g2m_receivers", "g2m_features", "mesh_features", "m2g_senders", "m2g_features"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


# -- model ------------------------------------------------------------------------------------
def test_registered_builders_and_output_shape() -> None:
    assert {"graphcast", "graphcast_tiny"} <= set(BACKBONES.list())
    model = tiny(n_input=2)
    assert model.input_layout == "B T C H W"
    assert model.feature_info == [{"layout": "B C H W", "channels": 2, "reduction": 1}]
    x, f, s = inputs(model, batch=3)
    assert f.shape == (3, 3 * 1, 9, 18)
    out = model.forward_features(x, forcings=f, static=s)
    assert out.shape == (3, 2, 9, 18) and torch.isfinite(out).all()
    # a per-sample static field gives the same result as the shared one
    torch.testing.assert_close(model(x, f, s.expand(3, -1, -1, -1)), out)


def test_gradients_reach_every_parameter() -> None:
    model = tiny()
    x, f, s = inputs(model)
    model(x, f, s).square().mean().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead


def test_every_input_influences_the_output() -> None:
    model = tiny()
    x, f, s = inputs(model)
    for i, name in enumerate(("x", "forcings", "static")):
        call = [x, f, s]
        call[i] = call[i].clone().requires_grad_(True)
        model(*call).sum().backward()
        grad = call[i].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_activation_checkpointing_is_exact() -> None:
    plain, ckpt = tiny(), tiny(activation_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x, f, s = inputs(plain)
    outs, grads = [], []
    for model in (plain, ckpt):
        model.train()
        out = model(x, f, s)
        out.pow(2).mean().backward()
        outs.append(out.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=0, atol=0, msg=name)


def test_longitude_shift_by_360_gives_identical_output() -> None:
    a = tiny()
    b = tiny(lon=[v + 360.0 for v in SMALL_LON])
    b.load_state_dict(a.state_dict())  # same grid signature: accepted
    x, f, s = inputs(a)
    assert torch.equal(a(x, f, s), b(x, f, s))


def test_relabelled_longitudes_permute_the_output() -> None:
    # [0, 360) and [-180, 180) describe the same points; rolling the data rolls the prediction
    a = tiny()
    shifted = SMALL_LON[9:] + SMALL_LON[:9]
    b = tiny(lon=[v - 360.0 if v >= 180 else v for v in shifted])
    with torch.no_grad():
        for (_, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
            pb.copy_(pa)
    x, f, s = inputs(a)

    def roll(t: torch.Tensor) -> torch.Tensor:
        return torch.roll(t, shifts=-9, dims=-1)

    torch.testing.assert_close(b(roll(x), roll(f), roll(s)), roll(a(x, f, s)), rtol=1e-5, atol=1e-5)


def test_state_dict_holds_learned_weights_and_grid_signature_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = tiny()
    state = model.state_dict()
    learned = {n for n, _ in model.named_parameters()}
    assert set(state) == learned | {"grid_signature"}
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    other = tiny()
    with torch.no_grad():
        for p in other.parameters():
            p.zero_()
    other.load_pretrained(str(path))
    x, f, s = inputs(model)
    torch.testing.assert_close(other(x, f, s), model(x, f, s))


def test_checkpoint_for_another_grid_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    uk = tiny(lat=UK_LAT, lon=UK_LON)
    path = tmp_path / "uk.safetensors"
    save_file(uk.state_dict(), str(path))
    small = tiny()
    with pytest.raises(CheckpointError, match=r"grid mismatch.*33x49 grid.*9x18 grid"):
        small.load_pretrained(str(path))
    with pytest.raises(CheckpointError, match="grid mismatch"):
        small.load_state_dict(uk.state_dict())  # a Lightning resume takes this path
    # same shape, other coordinates
    moved = tiny(lat=[v - 5.0 for v in SMALL_LAT])
    with pytest.raises(CheckpointError, match="other grid coordinates"):
        moved.load_state_dict(small.state_dict())
    # the weights themselves do not depend on the grid
    small.load_pretrained(str(path), allow_grid_change=True)
    assert torch.equal(small.grid_signature, tiny().grid_signature)
    torch.testing.assert_close(small.encoder.grid_embed.fc1.weight, uk.encoder.grid_embed.fc1.weight)


def test_checkpoint_with_other_sizes_names_the_config_keys(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "wide.safetensors"
    save_file(tiny(latent_size=16, n_channels=3).state_dict(), str(path))
    with pytest.raises(CheckpointError, match=r"(?s)latent_size.*graphcast\(|graphcast\(.*latent_size"):
        tiny().load_pretrained(str(path))
    with pytest.raises(CheckpointError, match="not found"):
        tiny().load_pretrained(str(tmp_path / "missing.safetensors"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"x": (2, 2, 9, 18)}, "expected B T C H W, got"),
        ({"x": (2, 2, 2, 9, 18)}, "T = n_input = 1"),
        ({"x": (2, 1, 3, 9, 18)}, "C = n_channels = 2"),
        ({"x": (2, 1, 2, 9, 17)}, "H W = 9 18"),
        ({"f": (2, 2, 1, 9, 18)}, r"rearrange\(f, 'b t f h w -> b \(t f\) h w'\)"),
        ({"f": (2, 1, 9, 18)}, r"\(n_input \+ 1\) \* n_forcings = 2"),
        ({"f": None}, "n_forcings=1"),
        ({"s": (3, 1, 9, 18)}, "B = 1 or 2"),
        ({"s": (1, 2, 9, 18)}, "n_static = 1"),
        ({"s": None}, "n_static=1"),
    ],
)
def test_shape_errors(change: dict[str, tuple[int, ...] | None], message: str) -> None:
    model = tiny()
    x, f, s = inputs(model)
    args = {"x": x, "f": f, "s": s}
    for key, shape in change.items():
        args[key] = None if shape is None else torch.zeros(shape)
    with pytest.raises(ShapeError, match=message):
        model.forward_features(args["x"], forcings=args["f"], static=args["s"])  # type: ignore[arg-type]


def test_invalid_settings_are_all_reported() -> None:
    with pytest.raises(ConfigError) as err:
        build_graphcast_tiny(lat=[0.0, 95.0], lon=None, n_channels=0, mesh_refinement=12, grid2mesh_radius_factor=0)
    text = str(err.value)
    for key in ("lat and backbone.lon", "backbone.lat", "n_channels", "mesh_refinement", "grid2mesh_radius_factor"):
        assert key in text, key


def test_default_peft_targets_are_processor_linears() -> None:
    model = tiny()
    names = dict(model.named_modules())
    hits = {n for n in names for pat in model.default_peft_targets if fnmatch.fnmatchcase(n, pat)}
    assert hits and all(n.startswith("processor.layers.") for n in hits)
    assert all(isinstance(names[n], nn.Linear) for n in hits)
    # 4 Linears in each edge MLP, 2 in each node MLP, per processor layer
    assert len(hits) == 6 * len(model.processor.layers)
