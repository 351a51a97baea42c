"""Visual prompt tuning (Jia et al. 2022) for token backbones whose blocks map (B, N, D) -> (B, N, D).

Target the transformer *blocks* (``re:blocks\\.\\d+``). The caller always sees N tokens:

* deep (the paper's VPT-Deep): every targeted block owns P learned tokens, prepends them to its
  input and drops them from its output, so each block attends over fresh prompts;
* shallow (VPT-Shallow): the first targeted block owns the P tokens and prepends them; the
  blocks after it carry them along, and the last targeted block drops them.

"First" and "last" are in the order ``attach`` adds the targets (module order for a single
pattern); targets listed against their run order (``["blocks.2", "blocks.0"]``) are refused.
Prompts change the output from the start (the tokens attend), so unlike the other methods an
adapted model does not equal its base at init; ``core.enable(model, False)`` does. Not
mergeable: prompts are inputs, not a weight update.

Several adapters on one block compose. Per block the sequence is laid out as
``[deep prompts | newly joined shallow prompts | carried shallow prompts | tokens]``: deep
prompts sit in front because they leave again at this block's output, and shallow adapters
stack at the front of the carried region. So shallow adapters that share blocks must span the
same blocks or nest; two whose spans cross would drop each other's tokens.

Extra arguments to a block (masks, position biases of length N) are passed through unchanged,
so blocks that take per-token arguments cannot be prompted.
"""

from __future__ import annotations

import math
import weakref
from typing import Annotated, Any

import torch
from torch import nn

from sciadapt.errors import ConfigError, ShapeError
from sciadapt.peft.adapters import factory_kwargs, first_tensor, io_widths, note_target, unwrap
from sciadapt.peft.core import MethodBase, PeftLayer, register_wrapper
from sciadapt.registry import PEFT_METHODS
from sciadapt.spec import Ge


@register_wrapper("vpt", nn.Module)
class VptLayer(PeftLayer):
    """A token block with prompt-token adapters."""

    method_name = "vpt"
    mergeable = False

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.vpt_prompts = nn.ParameterDict()  # adapter -> (P, D); only on blocks that own prompts
        self.vpt_dropout = nn.ModuleDict()
        self.n_prompts: dict[str, int] = {}
        self.deep: dict[str, bool] = {}
        self.prepends: dict[str, bool] = {}  # shallow: this block adds the prompts
        self.strips: dict[str, bool] = {}  # shallow: this block drops them
        self.width = 0  # D
        self.where = ""  # the block's name, for run-time errors

    def add_prompts(self, name: str, method: VPT, module_name: str, first: bool) -> None:
        d_in, d_out = io_widths(self.base_layer)
        kind = type(unwrap(self.base_layer)).__name__
        if d_in is None or d_out is None:
            raise ConfigError(
                f"{module_name}: cannot tell the token width of this {kind} (no dim/embed_dim/hidden_size "
                "attribute and no Linear inside); vpt targets transformer blocks mapping (B, N, D) -> (B, N, D)"
            )
        if d_in != d_out:
            raise ConfigError(
                f"{module_name}: vpt needs a block mapping (B, N, D) -> (B, N, D), but this {kind} maps "
                f"{d_in} -> {d_out}; target the transformer blocks (e.g. 're:blocks\\.\\d+')"
            )
        self.register_adapter(name)
        self.width, self.where = d_in, module_name
        self.n_prompts[name] = method.n_prompts
        self.deep[name] = method.deep
        # deep: every block is its own first and last; shallow: the method fixes the chain
        self.prepends[name] = method.deep or first
        self.strips[name] = True
        self.vpt_dropout[name] = nn.Dropout(method.dropout) if method.dropout > 0 else nn.Identity()
        if self.prepends[name]:
            p = torch.empty(method.n_prompts, d_in, **factory_kwargs(self.base_layer))
            with torch.no_grad():
                if method.patch_size is not None:
                    # the paper's Xavier-uniform bound, treating a prompt as a patch embedding of
                    # 3 * patch_area pixels into D
                    v = math.sqrt(6.0 / (3 * method.patch_size**2 + d_in))
                    nn.init.uniform_(p, -v, v)
                else:
                    nn.init.normal_(p, std=0.02)
            self.vpt_prompts[name] = nn.Parameter(p)

    def _prompts(self, name: str, batch: int, like: torch.Tensor) -> torch.Tensor:
        p = self.vpt_prompts[name].to(like.dtype).unsqueeze(0).expand(batch, -1, -1)  # (B, P, D)
        dropped: torch.Tensor = self.vpt_dropout[name](p)  # dropout after expand: a fresh mask per sample, as the paper
        return dropped

    def adapted_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        names = self.unmerged_active()
        if not names:
            return self.base_layer(x, *args, **kwargs)
        if x.dim() != 3 or x.shape[-1] != self.width:
            raise ShapeError(f"{self.where}: vpt expected tokens B N D with D={self.width}, got {tuple(x.shape)}")
        b = x.shape[0]
        h = x  # (B, carried + N, D)
        for name in names:
            if not self.deep[name] and self.prepends[name]:
                h = torch.cat([self._prompts(name, b, h), h], dim=1)  # (B, P + carried + N, D)
        n_deep = 0
        for name in names:
            if self.deep[name]:
                h = torch.cat([self._prompts(name, b, h), h], dim=1)
                n_deep += self.n_prompts[name]
        out = self.base_layer(h, *args, **kwargs)
        y, rest = first_tensor(out, self.where)  # (B, n_deep + shallow + carried + N, D)
        if y.dim() != 3 or y.shape[1] != h.shape[1]:
            # prompts are found by position, which only holds if the block keeps the token count
            raise ShapeError(
                f"{self.where}: vpt needs a block that keeps the token count; it mapped {tuple(h.shape)} -> {tuple(y.shape)}"
            )
        n_drop = n_deep + sum(self.n_prompts[n] for n in names if not self.deep[n] and self.strips[n])
        y = y[:, n_drop:]  # (B, carried + N, D)
        return y if rest is None else (y, *rest)


def _check_run_order(before: str, after: str) -> None:
    """Refuse shallow targets listed against the order their blocks run, where the names show it.

    Shallow roles follow the order ``attach`` adds the targets, which is the order of the
    patterns. Where two names first differ in an index (``blocks.2`` vs ``blocks.0``) the
    smaller index runs first (ModuleList/Sequential order); other names cannot tell, so pass.
    """
    for a, b in zip(before.split("."), after.split("."), strict=False):
        if a != b:
            if a.isdigit() and b.isdigit() and int(b) < int(a):
                raise ConfigError(
                    f"peft.targets: shallow vpt adds its prompts at the first target and drops them after the "
                    f"last, in the order the targets are listed, but {after} is listed after {before}, which "
                    "runs later; list the blocks in the order they run (or use one pattern, e.g. 're:blocks\\.\\d+')"
                )
            return


class VPT(MethodBase):
    """The visual-prompt-tuning method object (see :func:`build_vpt`)."""

    name = "vpt"
    family = "vpt"  # VptLayer is registered for any nn.Module
    # only the outermost module a pattern matches is meant: the core keeps `blocks.0`, not its children
    whole_modules = True

    def __init__(self, n_prompts: int, deep: bool, dropout: float, patch_size: int | None) -> None:
        # spec.py has no strict upper bound (`Lt`) for the signature, so [0, 1) is checked here
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"peft.dropout must be in [0, 1), got {dropout}")
        self.n_prompts, self.deep, self.dropout, self.patch_size = n_prompts, deep, dropout, patch_size
        self._seen: dict[str, list[str]] = {}
        # shallow: the block added last, which drops the prompts until a later one takes over
        self._last: dict[str, weakref.ref[VptLayer]] = {}

    def config(self) -> dict[str, Any]:
        return {"n_prompts": self.n_prompts, "deep": self.deep, "dropout": self.dropout, "patch_size": self.patch_size}

    def add(self, layer: PeftLayer, adapter: str, module_name: str, slices: tuple[str, ...] | None) -> None:
        assert isinstance(layer, VptLayer)
        if slices is not None:
            raise ConfigError(f"{module_name}: vpt adapts whole blocks; drop the [q,k,v] slice")
        first = note_target(self._seen, adapter, module_name, self.name)
        prev = None if first or self.deep else self._last[adapter]()
        if not (first or self.deep or prev is not None):
            raise RuntimeError(f"vpt: the block before {module_name} was freed during attach")
        if prev is not None:
            _check_run_order(self._seen[adapter][-2], module_name)
        layer.add_prompts(adapter, self, module_name, first)
        if not self.deep:
            if prev is not None:
                prev.strips[adapter] = False  # the prompts now travel on to this block
            self._last[adapter] = weakref.ref(layer)


@PEFT_METHODS.register("vpt")
def build_vpt(
    n_prompts: Annotated[int, Ge(1)] = 10,
    deep: bool = True,
    dropout: float = 0.0,
    patch_size: Annotated[int, Ge(1)] | None = None,
) -> VPT:
    """Visual prompt tuning: learned tokens prepended to the targeted blocks' inputs.

    Target the transformer blocks (``re:blocks\\.\\d+``). The caller's token count is unchanged.
    Train the prompts with the head (``core.mark_trainable(model, name, also=["head"])``).

    Args:
        n_prompts: prompt tokens P per prompted block.
        deep: VPT-Deep (fresh prompts in every targeted block) or VPT-Shallow (prompts added at
            the first targeted block, dropped after the last).
        dropout: dropout on the prompt tokens.
        patch_size: the backbone's patch size, for the paper's init ``uniform(-v, v)`` with
            ``v = sqrt(6 / (3 * patch_size**2 + D))``; unknown (``None``): normal with std 0.02.
    """
    return VPT(n_prompts, deep, dropout, patch_size)


__all__ = ["VPT", "VptLayer", "build_vpt"]
