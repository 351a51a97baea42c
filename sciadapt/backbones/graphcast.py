"""GraphCast-style encoder-processor-decoder on an icosahedral multi-mesh (Lam et al., Science 2023).

One call maps the last ``n_input`` normalised states of a lat-lon grid, plus forcings and static
fields, to the **normalised tendency** of every channel (the task adds it, rescaled, to the last
state). The architecture follows the paper and ``google-deepmind/graphcast``:

* **encoder** (grid -> mesh): grid node features (inputs, forcings, static fields and
  ``sin(lat), cos(lon), sin(lon)``), mesh node features (their position) and grid->mesh edge features
  are embedded by MLPs; one interaction-network step updates the edges and the mesh nodes, and the
  grid nodes get their own residual MLP update;
* **processor**: ``processor_layers`` interaction-network steps with unshared weights on the
  multi-mesh (the edges of every refinement level), each updating edges and nodes with residuals;
* **decoder** (mesh -> grid): one interaction-network step from the three vertices of the triangle
  holding each grid point, then an output MLP to ``n_channels``.

Every MLP is ``Linear -> SiLU -> Linear -> LayerNorm`` (no LayerNorm on the output MLP), the
aggregation is a sum (accumulated in float32). In the edge MLPs, the first Linear over
``[edge, sender, receiver]`` is three Linears whose outputs add up, with the node ones applied
before the gather (the same function, far fewer multiply-adds when edges outnumber nodes).

The graphs are built from ``lat``/``lon`` at construction (:mod:`sciadapt.backbones.mesh`, cached
per process) and held in non-persistent buffers, so a checkpoint holds the learned weights plus a
6-number ``grid_signature``; loading weights made for another grid raises :class:`CheckpointError`.

Reference: R. Lam et al., "Learning skillful medium-range global weather forecasting", Science 382
(2023), https://arxiv.org/abs/2212.12794
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, cast

import numpy as np
import torch
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from sciadapt.backbones.mesh import MAX_REFINEMENT, GridMeshGraph, build_graph
from sciadapt.errors import CheckpointError, ConfigError, ShapeError
from sciadapt.hub import describe_mismatch, read_state_dict, resolve_file
from sciadapt.registry import BACKBONES
from sciadapt.spec import FromData
from sciadapt.types import GRIDDED, IMAGE, check_shape

#: Structural features per node (``sin lat, cos lon, sin lon``) and per edge (length + 3D offset).
NODE_GEOMETRY = 3
EDGE_GEOMETRY = 4
_LIGHTNING_PREFIX = "backbone."


def default_grid() -> tuple[list[float], list[float]]:
    """The grid used when ``lat``/``lon`` are not given: global 5.625 deg (32 x 64), cell centres."""
    step = 5.625
    return [-90.0 + step / 2 + step * i for i in range(32)], [step * j for j in range(64)]


def scatter_sum(values: Tensor, index: Tensor, size: int) -> Tensor:
    """Sum ``values (B, E, D)`` into ``(B, size, D)`` rows ``index (E,)``, accumulating in float32."""
    out = torch.zeros(values.shape[0], size, values.shape[2], dtype=torch.float32, device=values.device)
    out.index_add_(1, index, values.float())
    return out.to(values.dtype)


class MLP(nn.Module):
    """GraphCast's MLP: ``Linear -> SiLU -> Linear`` followed by ``LayerNorm`` (unless disabled)."""

    def __init__(self, in_features: int, hidden: int, out_features: int, layer_norm: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(hidden, out_features)
        self.norm: nn.Module = nn.LayerNorm(out_features) if layer_norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return cast(Tensor, self.norm(self.fc2(self.act(self.fc1(x)))))


class EdgeMLP(nn.Module):
    """The edge update ``MLP([edge, sender, receiver])`` with its first Linear split in three.

    ``fc1_edge(e) + fc1_sender(h_s)[senders] + fc1_receiver(h_r)[receivers]`` equals one Linear on
    the concatenation; projecting the nodes before gathering them saves work (edges outnumber nodes).
    """

    def __init__(self, latent: int, hidden: int) -> None:
        super().__init__()
        self.fc1_edge = nn.Linear(latent, hidden)
        self.fc1_sender = nn.Linear(latent, hidden, bias=False)
        self.fc1_receiver = nn.Linear(latent, hidden, bias=False)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(hidden, latent)
        self.norm = nn.LayerNorm(latent)

    def forward(self, edges: Tensor, src: Tensor, dst: Tensor, senders: Tensor, receivers: Tensor) -> Tensor:
        """``edges (B|1, E, D)``, ``src (B, Ns, D)``, ``dst (B, Nr, D)`` -> edge update ``(B, E, D)``."""
        h = self.fc1_edge(edges)
        h = h + self.fc1_sender(src).index_select(1, senders)  # (B, E, hidden)
        h = h + self.fc1_receiver(dst).index_select(1, receivers)
        return cast(Tensor, self.norm(self.fc2(self.act(h))))


class InteractionLayer(nn.Module):
    """One interaction-network step from ``src`` to ``dst`` nodes, with residual edges and nodes.

    ``e' = e + EdgeMLP(e, src[s], dst[r])``; ``dst' = dst + NodeMLP([dst, sum_{edges into r} (e' - e)])``.
    """

    def __init__(self, latent: int, hidden: int) -> None:
        super().__init__()
        self.edge_mlp = EdgeMLP(latent, hidden)
        self.node_mlp = MLP(2 * latent, hidden, latent)

    def forward(
        self, src: Tensor, dst: Tensor, edges: Tensor, senders: Tensor, receivers: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Return the updated ``dst (B, Nr, D)`` and edges ``(B, E, D)``."""
        update = self.edge_mlp(edges, src, dst, senders, receivers)  # (B, E, D)
        messages = scatter_sum(update, receivers, dst.shape[1])  # (B, Nr, D)
        dst = dst + self.node_mlp(torch.cat([dst, messages], dim=-1))
        return dst, edges + update


class Encoder(nn.Module):
    """Grid -> mesh: embed grid nodes, mesh nodes and edges, then one interaction step."""

    def __init__(self, grid_features: int, latent: int, hidden: int) -> None:
        super().__init__()
        self.grid_embed = MLP(grid_features, hidden, latent)
        self.mesh_embed = MLP(NODE_GEOMETRY, hidden, latent)
        self.edge_embed = MLP(EDGE_GEOMETRY, hidden, latent)
        self.interaction = InteractionLayer(latent, hidden)
        self.grid_mlp = MLP(latent, hidden, latent)

    def forward(
        self, grid: Tensor, mesh_geometry: Tensor, edge_geometry: Tensor, senders: Tensor, receivers: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``grid (B, G, F)`` -> latent grid ``(B, G, D)`` and mesh ``(B, M, D)`` nodes."""
        batch = grid.shape[0]
        grid_h = self.grid_embed(grid)  # (B, G, D)
        mesh_h = self.mesh_embed(mesh_geometry).unsqueeze(0).expand(batch, -1, -1)  # (B, M, D)
        edges = self.edge_embed(edge_geometry).unsqueeze(0)  # (1, E, D)
        mesh_h, _ = self.interaction(grid_h, mesh_h, edges, senders, receivers)
        # grid nodes receive no grid->mesh edge: GraphCast updates them with an MLP of their own
        grid_h = grid_h + self.grid_mlp(grid_h)
        return grid_h, mesh_h


class Processor(nn.Module):
    """``n_layers`` unshared interaction steps on the multi-mesh."""

    def __init__(self, latent: int, hidden: int, n_layers: int, activation_checkpointing: bool) -> None:
        super().__init__()
        self.edge_embed = MLP(EDGE_GEOMETRY, hidden, latent)
        self.layers = nn.ModuleList(InteractionLayer(latent, hidden) for _ in range(n_layers))
        self.activation_checkpointing = activation_checkpointing

    def forward(self, nodes: Tensor, edge_geometry: Tensor, senders: Tensor, receivers: Tensor) -> Tensor:
        """``nodes (B, M, D)`` -> ``(B, M, D)``."""
        edges = self.edge_embed(edge_geometry).unsqueeze(0)  # (1, E, D); (B, E, D) after layer 0
        ckpt = self.activation_checkpointing and torch.is_grad_enabled()
        for layer in self.layers:
            if ckpt:
                nodes, edges = checkpoint(layer, nodes, nodes, edges, senders, receivers, use_reentrant=False)
            else:
                nodes, edges = layer(nodes, nodes, edges, senders, receivers)
        return nodes


class Decoder(nn.Module):
    """Mesh -> grid: one interaction step from the containing triangles, then the output MLP."""

    def __init__(self, latent: int, hidden: int, n_out: int) -> None:
        super().__init__()
        self.edge_embed = MLP(EDGE_GEOMETRY, hidden, latent)
        self.interaction = InteractionLayer(latent, hidden)
        self.output = MLP(latent, hidden, n_out, layer_norm=False)

    def forward(
        self, mesh_h: Tensor, grid_h: Tensor, edge_geometry: Tensor, senders: Tensor, receivers: Tensor
    ) -> Tensor:
        """Latent mesh ``(B, M, D)`` and grid ``(B, G, D)`` nodes -> outputs ``(B, G, n_out)``."""
        edges = self.edge_embed(edge_geometry).unsqueeze(0)  # (1, E, D)
        grid_h, _ = self.interaction(mesh_h, grid_h, edges, senders, receivers)
        return cast(Tensor, self.output(grid_h))


class GraphCast(nn.Module):
    """GraphCast-style mesh GNN predicting normalised tendencies on a lat-lon grid.

    Build it with :func:`build_graphcast` (the config schema); the constructor takes validated values.

    Args:
        lat: Grid latitudes ``(H,)`` in degrees (any order).
        lon: Grid longitudes ``(W,)`` in degrees (taken modulo 360).
        n_channels: State channels ``C`` (variables x levels), predicted and fed back.
        n_forcings: Forcing channels per time step ``F``.
        n_static: Static channels ``S``.
        n_input: Past states per step ``T``.
        mesh_refinement: Icosahedron splits of the finest mesh level.
        latent_size: Width ``D`` of every node and edge latent.
        processor_layers: Interaction steps on the multi-mesh.
        mlp_hidden: Hidden width of every MLP.
        grid2mesh_radius_factor: Grid->mesh radius as a fraction of the longest finest-mesh edge.
        activation_checkpointing: Recompute each processor layer in backward.
    """

    input_layout = GRIDDED

    grid_signature: Tensor
    grid_geometry: Tensor
    mesh_geometry: Tensor
    g2m_senders: Tensor
    g2m_receivers: Tensor
    g2m_geometry: Tensor
    mesh_senders: Tensor
    mesh_receivers: Tensor
    mesh_edge_geometry: Tensor
    m2g_senders: Tensor
    m2g_receivers: Tensor
    m2g_geometry: Tensor

    def __init__(
        self,
        lat: list[float],
        lon: list[float],
        n_channels: int,
        n_forcings: int,
        n_static: int,
        n_input: int,
        mesh_refinement: int,
        latent_size: int,
        processor_layers: int,
        mlp_hidden: int,
        grid2mesh_radius_factor: float,
        activation_checkpointing: bool,
    ) -> None:
        super().__init__()
        self.n_channels = n_channels
        self.n_forcings = n_forcings
        self.n_static = n_static
        self.n_input = n_input
        self.config: dict[str, Any] = {
            "grid": f"{len(lat)}x{len(lon)}",
            "n_channels": n_channels,
            "n_forcings": n_forcings,
            "n_static": n_static,
            "n_input": n_input,
            "mesh_refinement": mesh_refinement,
            "latent_size": latent_size,
            "processor_layers": processor_layers,
            "mlp_hidden": mlp_hidden,
            "grid2mesh_radius_factor": grid2mesh_radius_factor,
        }
        self.graph: GridMeshGraph = build_graph(tuple(lat), tuple(lon), mesh_refinement, float(grid2mesh_radius_factor))
        self.grid_shape = self.graph.grid_shape
        self._register_graph(self.graph)
        self._allow_grid_change = False

        grid_features = n_input * n_channels + (n_input + 1) * n_forcings + n_static + NODE_GEOMETRY
        self.encoder = Encoder(grid_features, latent_size, mlp_hidden)
        self.processor = Processor(latent_size, mlp_hidden, processor_layers, activation_checkpointing)
        self.decoder = Decoder(latent_size, mlp_hidden, n_channels)

        self.feature_info: list[dict[str, Any]] = [{"layout": IMAGE, "channels": n_channels, "reduction": 1}]
        self.default_peft_targets: list[str] = ["processor.layers.*.edge_mlp.fc*", "processor.layers.*.node_mlp.fc*"]

    # -- graph buffers ----------------------------------------------------------------------
    def _register_graph(self, g: GridMeshGraph) -> None:
        """Graph tensors as non-persistent buffers (rebuilt from lat/lon, never checkpointed)."""

        # copies: the arrays belong to build_graph's cache, shared by every model on this grid
        def idx(a: np.ndarray) -> Tensor:
            return torch.tensor(a, dtype=torch.long)

        def feat(a: np.ndarray) -> Tensor:
            return torch.tensor(a, dtype=torch.float32)

        for name, value in (
            ("grid_geometry", feat(g.grid_nodes)),
            ("mesh_geometry", feat(g.mesh_nodes)),
            ("g2m_senders", idx(g.g2m_senders)),
            ("g2m_receivers", idx(g.g2m_receivers)),
            ("g2m_geometry", feat(g.g2m_features)),
            ("mesh_senders", idx(g.mesh_senders)),
            ("mesh_receivers", idx(g.mesh_receivers)),
            ("mesh_edge_geometry", feat(g.mesh_features)),
            ("m2g_senders", idx(g.m2g_senders)),
            ("m2g_receivers", idx(g.m2g_receivers)),
            ("m2g_geometry", feat(g.m2g_features)),
        ):
            self.register_buffer(name, value, persistent=False)
        # persistent: grid shape, refinement and 3 x 20 bits of the digest (exact even as float32)
        digest = int(g.signature[:15], 16)
        chunks = [(digest >> (20 * i)) & 0xFFFFF for i in range(3)]
        sig = torch.tensor([*g.grid_shape, g.refinement, *chunks], dtype=torch.long)
        self.register_buffer("grid_signature", sig, persistent=True)

    @property
    def n_mesh(self) -> int:
        """Mesh nodes used (after pruning to the grid's region)."""
        return self.graph.n_mesh

    # -- forward --------------------------------------------------------------------------
    def forward_features(self, x: Tensor, forcings: Tensor | None = None, static: Tensor | None = None) -> Tensor:
        """Predict the normalised tendency of every channel.

        Args:
            x: Normalised states ``(B, T, C, H, W)``, ``T = n_input`` (oldest first),
                ``C = n_channels``, ``H W`` the grid the model was built for.
            forcings: ``(B, (n_input + 1) * n_forcings, H, W)``: the forcings of the ``n_input``
                input times and of the target time, time-major (``rearrange(f, "b t f h w ->
                b (t f) h w")``). Required when ``n_forcings > 0``.
            static: ``(B, S, H, W)`` or ``(1, S, H, W)``, ``S = n_static``. Required when ``n_static > 0``.

        Returns:
            ``(B, C, H, W)`` normalised tendencies.

        Raises:
            ShapeError: If an input does not match its layout, the model's sizes or grid.
        """
        grid = self._grid_inputs(x, forcings, static)  # (B, G, F)
        grid = torch.cat([grid, self.grid_geometry.to(grid.dtype).expand(grid.shape[0], -1, -1)], dim=-1)
        grid_h, mesh_h = self.encoder(
            grid,
            self.mesh_geometry.to(grid.dtype),
            self.g2m_geometry.to(grid.dtype),
            self.g2m_senders,
            self.g2m_receivers,
        )
        mesh_h = self.processor(mesh_h, self.mesh_edge_geometry.to(grid.dtype), self.mesh_senders, self.mesh_receivers)
        out = self.decoder(mesh_h, grid_h, self.m2g_geometry.to(grid.dtype), self.m2g_senders, self.m2g_receivers)
        h, w = self.grid_shape
        return cast(Tensor, rearrange(out, "b (h w) c -> b c h w", h=h, w=w))  # (B, C, H, W)

    def forward(self, x: Tensor, forcings: Tensor | None = None, static: Tensor | None = None) -> Tensor:
        """Same as :meth:`forward_features`."""
        return self.forward_features(x, forcings=forcings, static=static)

    def _grid_inputs(self, x: Tensor, forcings: Tensor | None, static: Tensor | None) -> Tensor:
        """Check the inputs and flatten them to grid node features ``(B, H * W, F)``."""
        h, w = self.grid_shape
        grid_hint = f"H W = {h} {w}, the grid the model was built for (set backbone.lat/lon to the data's grid)"
        check_shape(x, GRIDDED, name="graphcast input x")
        batch, t, c, xh, xw = x.shape
        if (xh, xw) != (h, w):
            raise ShapeError(f"graphcast input x: expected B T C H W with {grid_hint}, got {tuple(x.shape)}")
        if t != self.n_input or c != self.n_channels:
            raise ShapeError(
                f"graphcast input x: expected B T C H W with T = n_input = {self.n_input} and "
                f"C = n_channels = {self.n_channels}, got {tuple(x.shape)}"
            )
        parts = [rearrange(x, "b t c h w -> b (h w) (t c)")]
        n_f = (self.n_input + 1) * self.n_forcings
        if forcings is None:
            if self.n_forcings:
                raise ShapeError(
                    f"graphcast: built with n_forcings={self.n_forcings}, so forward needs forcings "
                    f"(B, (n_input + 1) * n_forcings = {n_f}, H, W); got none"
                )
        else:
            if forcings.dim() == 5:
                raise ShapeError(
                    f"graphcast forcings: expected B F H W with F = (n_input + 1) * n_forcings = {n_f}, got "
                    f"{tuple(forcings.shape)}; flatten time into channels: rearrange(f, 'b t f h w -> b (t f) h w')"
                )
            check_shape(forcings, IMAGE, name="graphcast forcings")
            if forcings.shape[0] != batch or forcings.shape[1] != n_f or tuple(forcings.shape[2:]) != (h, w):
                raise ShapeError(
                    f"graphcast forcings: expected B F H W with B = {batch}, F = (n_input + 1) * n_forcings = "
                    f"{n_f} and {grid_hint}, got {tuple(forcings.shape)}"
                )
            if n_f:
                parts.append(rearrange(forcings, "b f h w -> b (h w) f"))
        if static is None:
            if self.n_static:
                raise ShapeError(
                    f"graphcast: built with n_static={self.n_static}, so forward needs static "
                    f"(B or 1, {self.n_static}, H, W); got none"
                )
        else:
            check_shape(static, IMAGE, name="graphcast static")
            if (
                static.shape[0] not in (1, batch)
                or static.shape[1] != self.n_static
                or tuple(static.shape[2:]) != (h, w)
            ):
                raise ShapeError(
                    f"graphcast static: expected B S H W with B = 1 or {batch}, S = n_static = {self.n_static} "
                    f"and {grid_hint}, got {tuple(static.shape)}"
                )
            if self.n_static:
                parts.append(rearrange(static, "b s h w -> b (h w) s").expand(batch, -1, -1))
        return torch.cat([p.to(x.dtype) for p in parts], dim=-1)  # (B, G, F)

    # -- checkpoints ----------------------------------------------------------------------
    def _describe_signature(self, sig: Tensor) -> str:
        values = [int(v) for v in sig.tolist()]
        if len(values) != 6:
            return "an unknown grid"
        return f"a {values[0]}x{values[1]} grid with mesh refinement {values[2]}"

    def _grid_problem(self, theirs: Tensor) -> str | None:
        """Why a checkpoint's ``grid_signature`` does not fit this model, or None when it does."""
        own = self.grid_signature
        if tuple(theirs.shape) == tuple(own.shape) and torch.equal(theirs.to(own.device, own.dtype), own):
            return None
        there, here = self._describe_signature(theirs), self._describe_signature(own)
        if there == here:
            return (
                f"grid mismatch: the checkpoint was made for {there}, like this model, but with other grid "
                "coordinates or another grid2mesh_radius_factor: build the model with the checkpoint's "
                "lat/lon and grid2mesh_radius_factor, or pass allow_grid_change=True to load_pretrained "
                "to reuse the weights on this grid"
            )
        return (
            f"grid mismatch: the checkpoint was made for {there}, this model is built for {here}: set "
            "backbone.lat/lon and mesh_refinement to the checkpoint's, or pass allow_grid_change=True to "
            "load_pretrained to reuse the weights on this grid (the weights do not depend on the grid)"
        )

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Every load path (load_pretrained, a Lightning resume, a plain load_state_dict) checks the grid.
        key = prefix + "grid_signature"
        if key in state_dict:
            if self._allow_grid_change:
                state_dict[key] = self.grid_signature.clone()
            else:
                problem = self._grid_problem(state_dict[key])
                if problem:
                    raise CheckpointError(problem)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def example_inputs(self, batch: int = 2) -> dict[str, Tensor]:
        """Random inputs shaped for this model: ``x`` (B, n_input, C, H, W) plus the forcings and
        static fields it takes."""
        gen = torch.Generator().manual_seed(0)
        h, w = self.grid_shape
        out = {"x": torch.randn(batch, self.n_input, self.n_channels, h, w, generator=gen)}
        if self.n_forcings:
            out["forcings"] = torch.randn(batch, (self.n_input + 1) * self.n_forcings, h, w, generator=gen)
        if self.n_static:
            out["static"] = torch.randn(1, self.n_static, h, w, generator=gen)
        return out

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` (grid signature included), what :meth:`load_pretrained` reads strictly."""
        from sciadapt.backbones._saved import save_state

        return save_state(self.state_dict(), directory, "graphcast")

    def load_pretrained(self, source: str, allow_grid_change: bool = False) -> None:
        """Load our own weights (safetensors or torch file, a folder, or ``hf://``) with ``strict=True``.

        A Lightning checkpoint is accepted; its ``backbone.`` entries are used with the prefix removed.

        Args:
            source: A file, a folder holding ``model.safetensors`` (or a torch file), or ``hf://org/repo``.
            allow_grid_change: Load weights made for another grid or mesh (the learned weights do
                not depend on it; this model keeps its own graph).

        Raises:
            CheckpointError: If the file cannot be read, was made for another grid (unless
                ``allow_grid_change``), or its keys or shapes do not match; the message names the
                config keys to change.
        """
        path = resolve_file(source)
        state = read_state_dict(path)
        if any(k.startswith(_LIGHTNING_PREFIX) for k in state):
            state = {k[len(_LIGHTNING_PREFIX) :]: v for k, v in state.items() if k.startswith(_LIGHTNING_PREFIX)}
        problems: list[str] = []
        if "grid_signature" in state and not allow_grid_change:
            grid = self._grid_problem(state["grid_signature"])
            if grid:
                problems.append(grid)
        own = self.state_dict()
        mismatch = describe_mismatch(own, state)
        if mismatch:
            problems += mismatch
            problems.append(
                "shapes follow n_input, n_channels, n_forcings and n_static (encoder.grid_embed, "
                "decoder.output), latent_size, mlp_hidden and processor_layers (number of processor.layers)"
            )
        if problems:
            settings = ", ".join(f"{k}={v}" for k, v in self.config.items())
            raise CheckpointError(
                f"cannot load {path} into graphcast({settings}):\n" + "\n".join(f"  - {p}" for p in problems)
            )
        self._allow_grid_change = allow_grid_change
        try:
            self.load_state_dict(state, strict=True)
        finally:
            self._allow_grid_change = False


def _validate(
    lat: list[float] | None,
    lon: list[float] | None,
    n_channels: int,
    n_forcings: int,
    n_static: int,
    n_input: int,
    mesh_refinement: int,
    latent_size: int,
    processor_layers: int,
    mlp_hidden: int | None,
    grid2mesh_radius_factor: float,
) -> None:
    """Raise one :class:`ConfigError` listing every invalid GraphCast setting."""
    problems: list[str] = []
    if (lat is None) != (lon is None):
        problems.append("backbone.lat and backbone.lon: give both (they follow the data) or neither")
    for name, values, bound in (("lat", lat, 90.0), ("lon", lon, None)):
        if values is None:
            continue
        arr = np.asarray(list(values), dtype=np.float64)
        if arr.ndim != 1 or arr.size == 0 or not np.isfinite(arr).all():
            problems.append(f"backbone.{name}: expected a non-empty list of finite degrees, got {len(arr)} values")
        elif bound is not None and np.abs(arr).max() > bound:
            problems.append(f"backbone.{name}: latitudes must lie in [-90, 90], got {arr.min()}..{arr.max()}")
    for name, value, minimum in (
        ("n_channels", n_channels, 1),
        ("n_forcings", n_forcings, 0),
        ("n_static", n_static, 0),
        ("n_input", n_input, 1),
        ("latent_size", latent_size, 1),
        ("processor_layers", processor_layers, 1),
    ):
        if not isinstance(value, int) or value < minimum:
            problems.append(f"backbone.{name}: expected an int >= {minimum}, got {value!r}")
    if mlp_hidden is not None and (not isinstance(mlp_hidden, int) or mlp_hidden < 1):
        problems.append(f"backbone.mlp_hidden: expected an int >= 1 or null (= latent_size), got {mlp_hidden!r}")
    if not isinstance(mesh_refinement, int) or not 0 <= mesh_refinement <= MAX_REFINEMENT:
        problems.append(
            f"backbone.mesh_refinement: expected an int in [0, {MAX_REFINEMENT}] (GraphCast uses 6), "
            f"got {mesh_refinement!r}"
        )
    if not grid2mesh_radius_factor > 0:
        problems.append(
            f"backbone.grid2mesh_radius_factor: expected > 0 (GraphCast uses 0.6), got {grid2mesh_radius_factor!r}"
        )
    if problems:
        raise ConfigError(problems)


@BACKBONES.register("graphcast")
def build_graphcast(
    lat: Annotated[list[float] | None, FromData] = None,
    lon: Annotated[list[float] | None, FromData] = None,
    n_channels: Annotated[int, FromData] = 1,
    n_forcings: Annotated[int, FromData] = 0,
    n_static: Annotated[int, FromData] = 0,
    n_input: Annotated[int, FromData] = 1,
    mesh_refinement: int = 5,
    latent_size: int = 512,
    processor_layers: int = 16,
    mlp_hidden: int | None = None,
    grid2mesh_radius_factor: float = 0.6,
    activation_checkpointing: bool = False,
    weights: str | None = None,
    grid_kind: Annotated[str, FromData] = "latlon",
) -> GraphCast:
    """Build a GraphCast-style mesh GNN predicting normalised tendencies on a lat-lon grid.

    ``lat``, ``lon``, ``n_channels``, ``n_forcings``, ``n_static`` and ``n_input`` follow the data
    (the datamodule fills them); the rest is the architecture. Works on global grids and on
    limited-area grids (the mesh is pruned to the region plus a margin of the grid->mesh radius).

    Args:
        lat: Grid latitudes in degrees ``(H,)``; follows the data. ``None`` (with ``lon``) builds on a
            global 5.625 deg grid (32 x 64), for smoke tests only.
        lon: Grid longitudes in degrees ``(W,)``, any convention (taken modulo 360); follows the data.
        n_channels: State channels ``C`` (variables x levels); follows the data.
        n_forcings: Forcing channels per time step; follows the data. ``forward`` takes the forcings
            of the ``n_input`` input times and of the target time: ``(B, (n_input + 1) * n_forcings, H, W)``.
        n_static: Static channels (land-sea mask, orography, ...); follows the data.
        n_input: Past states per step; follows the data.
        mesh_refinement: Splits of the icosahedron for the finest mesh level (GraphCast: 6, 40,962
            nodes at 0.25 deg; 5 has 10,242 nodes).
        latent_size: Node and edge latent width (GraphCast: 512).
        processor_layers: Message-passing steps on the multi-mesh (GraphCast: 16).
        mlp_hidden: Hidden width of every MLP; ``None`` uses ``latent_size``.
        grid2mesh_radius_factor: Grid->mesh radius as a fraction of the longest edge of the finest
            mesh (GraphCast: 0.6). Mesh->grid edges always come from the 3 vertices of the triangle
            holding each grid point.
        activation_checkpointing: Recompute each processor layer in backward (less memory).
        weights: Optional checkpoint loaded with :meth:`GraphCast.load_pretrained`.
        grid_kind: ``latlon``, ``projected`` or ``curvilinear``; follows the data. The mesh needs
            ``latlon``; other grids take a grid-native backbone (``unet_grid``, ``swin_grid``).

    Returns:
        The model.

    Raises:
        ConfigError: Listing every invalid setting, or data not on a regular lat-lon grid.
        CheckpointError: If ``weights`` cannot be loaded (including a grid mismatch).
    """
    if grid_kind != "latlon":
        raise ConfigError(
            "backbone: the icosahedral mesh needs a regular latitude-longitude grid; this data is on a "
            f"{grid_kind} grid: use backbone=unet_grid or swin_grid"
        )
    _validate(
        lat, lon, n_channels, n_forcings, n_static, n_input, mesh_refinement, latent_size, processor_layers,
        mlp_hidden, grid2mesh_radius_factor,
    )  # fmt: skip
    if lat is None or lon is None:
        lat, lon = default_grid()
    model = GraphCast(
        lat=[float(v) for v in lat],
        lon=[float(v) for v in lon],
        n_channels=n_channels,
        n_forcings=n_forcings,
        n_static=n_static,
        n_input=n_input,
        mesh_refinement=mesh_refinement,
        latent_size=latent_size,
        processor_layers=processor_layers,
        mlp_hidden=latent_size if mlp_hidden is None else mlp_hidden,
        grid2mesh_radius_factor=float(grid2mesh_radius_factor),
        activation_checkpointing=activation_checkpointing,
    )
    if weights is not None:
        model.load_pretrained(weights)
    return model


@BACKBONES.register("graphcast_tiny")
def build_graphcast_tiny(
    lat: Annotated[list[float] | None, FromData] = None,
    lon: Annotated[list[float] | None, FromData] = None,
    n_channels: Annotated[int, FromData] = 1,
    n_forcings: Annotated[int, FromData] = 0,
    n_static: Annotated[int, FromData] = 0,
    n_input: Annotated[int, FromData] = 1,
    mesh_refinement: int = 2,
    latent_size: int = 32,
    processor_layers: int = 2,
    mlp_hidden: int | None = None,
    grid2mesh_radius_factor: float = 0.6,
    activation_checkpointing: bool = False,
    weights: str | None = None,
    grid_kind: Annotated[str, FromData] = "latlon",
) -> GraphCast:
    """A tiny GraphCast (mesh refinement 2, latent 32, 2 processor layers) for tests and smoke runs.

    Takes the same arguments as :func:`build_graphcast`.
    """
    # BACKBONES is a Registry[Any], so its decorator hands back a builder typed to return Any
    return cast(
        GraphCast,
        build_graphcast(
            lat=lat,
            lon=lon,
            n_channels=n_channels,
            n_forcings=n_forcings,
            n_static=n_static,
            n_input=n_input,
            mesh_refinement=mesh_refinement,
            latent_size=latent_size,
            processor_layers=processor_layers,
            mlp_hidden=mlp_hidden,
            grid2mesh_radius_factor=grid2mesh_radius_factor,
            activation_checkpointing=activation_checkpointing,
            weights=weights,
            grid_kind=grid_kind,
        ),
    )
