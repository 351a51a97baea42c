"""New input channels for a pretrained model: a wavelength or band it never saw in pre-training.

Solaris (Abdul Majid et al. 2024) fine-tunes a 3-D Swin forecaster pre-trained on some SDO
wavelengths on 1700 Å, a channel absent from pre-training. The layers that read (or write) one slice
per channel -- a patch embedding's kernel, a forecast decoder's output rows -- grow by one slice per new
channel. The pretrained slices are kept as they are (the new tensor holds the very same values, bit for
bit); each new slice starts from a declared rule:

``zeros``
    Zero weights: until training moves them, the extended model computes what the pretrained one did
    (the new channel is read but ignored).
``mean``
    The mean of the existing channels' slices: the new channel starts as "a typical channel".
``copy:<name>``
    A copy of the slice of the existing channel ``<name>`` (e.g. the nearest wavelength).

New channels are appended after the existing ones, in the order given; the data must list them last.
Channel names match case-insensitively (as Prithvi's band mapping does).

A backbone implements :class:`sciadapt.types.ExtendsChannels` with the functions here:
:func:`extend_channels` (any tensor, any channel axis), :func:`grow_conv_input` /
:func:`grow_linear_input` (an input layer, in place) and :func:`log_extension` (the one log line).
This module imports torch only inside the functions that need it, so the config check
(:mod:`sciadapt.stages.plan`) reads the rule grammar without importing torch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from sciadapt.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor, nn

logger = logging.getLogger(__name__)

#: The rules a new channel's weights start from (``copy:<name>`` names an existing channel).
RULES = ("zeros", "mean", "copy:<name>")
COPY = "copy:"


@dataclass(frozen=True)
class ChannelRule:
    """A parsed rule: ``kind`` and, for ``copy``, the source channel's name."""

    kind: Literal["zeros", "mean", "copy"]
    source: str = ""


def channel_key(name: object) -> str:
    """The form channel names are compared in (case-insensitive, surrounding spaces ignored)."""
    return str(name).strip().upper()


def parse_rule(rule: str) -> ChannelRule | None:
    """``zeros``, ``mean`` or ``copy:<name>`` as a :class:`ChannelRule`; None for anything else."""
    if not isinstance(rule, str):
        return None
    text = rule.strip()
    if text in ("zeros", "mean"):
        return ChannelRule(text)  # type: ignore[arg-type]
    if text.startswith(COPY) and text[len(COPY) :].strip():
        return ChannelRule("copy", text[len(COPY) :].strip())
    return None


def rule_problems(names: Sequence[object], rule: object, where: str) -> list[str]:
    """What is wrong with a ``new_channels`` block on its own (no model needed): its names and its rule.

    Args:
        names: The new channels' names.
        rule: The init rule.
        where: The key path of the block in messages (``stages[1] (add_1700).new_channels``).
    """
    problems = []
    if not names:
        problems.append(f"{where}.names: list at least one new channel (the data's channels not in the model)")
    keys = [channel_key(n) for n in names]
    repeated = sorted({str(n) for n, k in zip(names, keys, strict=True) if keys.count(k) > 1})
    if repeated:
        problems.append(f"{where}.names: names repeat (case-insensitive): {', '.join(repeated)}")
    parsed = parse_rule(rule) if isinstance(rule, str) else None
    if parsed is None:
        problems.append(
            f"{where}.init: {rule!r} is not a rule; use zeros (new weights zero: the model starts as the pretrained "
            "one), mean (the mean of the existing channels' weights) or copy:<name> (an existing channel's weights)"
        )
    elif parsed.kind == "copy" and channel_key(parsed.source) in keys:
        problems.append(f"{where}.init: {rule!r} copies a new channel; name one of the model's existing channels")
    return problems


def extension_problems(channels: Sequence[str], new: Sequence[str], rule: str, where: str) -> list[str]:
    """Everything wrong with adding ``new`` channels by ``rule`` to a model whose channels are ``channels``."""
    problems = rule_problems(list(new), rule, where)
    known = {channel_key(c) for c in channels}
    present = [n for n in new if channel_key(n) in known]
    if present:
        problems.append(
            f"{where}.names: the model already has {', '.join(map(str, present))} (its channels: "
            f"{', '.join(channels)}); list only channels it lacks"
        )
    parsed = parse_rule(rule)
    if parsed is not None and parsed.kind == "copy" and channel_key(parsed.source) not in known:
        problems.append(f"{where}.init: {rule!r} names no channel of the model; known channels: {', '.join(channels)}")
    return problems


def extend_channels(weight: Tensor, channels: Sequence[str], new: Sequence[str], rule: str, dim: int = 1) -> Tensor:
    """``weight`` with one more slice along ``dim`` per new channel; the existing slices keep their values.

    Args:
        weight: A tensor with ``len(channels)`` slices along ``dim`` (a Conv kernel ``(D, C, k...)`` with
            ``dim=1``, a decoder's output rows viewed as ``(L, C, ...)`` with ``dim=1``, ...).
        channels: The names of the existing slices, in order.
        new: The new channels' names, appended in this order.
        rule: ``zeros``, ``mean`` or ``copy:<name>`` (see the module docstring).
        dim: The channel axis.

    Returns:
        A new tensor (same dtype and device) of ``len(channels) + len(new)`` slices along ``dim``;
        ``out.narrow(dim, 0, len(channels))`` equals ``weight`` bit for bit.

    Raises:
        ConfigError: If the rule is not one of the rules, names an unknown channel, or ``weight`` does
            not have one slice per channel.
    """
    import torch

    problems = extension_problems(channels, new, rule, "new_channels")
    if weight.shape[dim] != len(channels):
        problems.append(
            f"new_channels: the tensor has {weight.shape[dim]} slices along axis {dim}, not one per channel "
            f"({len(channels)}: {', '.join(channels)})"
        )
    if problems:
        raise ConfigError(problems)
    parsed = parse_rule(rule)
    assert parsed is not None
    old = weight.detach()
    if parsed.kind == "zeros":
        piece = torch.zeros_like(old.narrow(dim, 0, 1))
    elif parsed.kind == "mean":
        piece = old.mean(dim=dim, keepdim=True)
    else:
        index = [channel_key(c) for c in channels].index(channel_key(parsed.source))
        piece = old.narrow(dim, index, 1)
    sizes = [-1] * old.dim()
    sizes[dim] = len(new)
    return torch.cat([old, piece.expand(*sizes)], dim=dim).contiguous()


def _replace_parameter(module: nn.Module, name: str, value: Tensor) -> None:
    import torch

    old = getattr(module, name)
    setattr(module, name, torch.nn.Parameter(value, requires_grad=old.requires_grad))


def grow_conv_input(conv: nn.Module, channels: Sequence[str], new: Sequence[str], rule: str) -> None:
    """Give a patch-embedding ``Conv1d/2d/3d`` (``groups=1``) one input channel more per new channel, in place.

    The kernel ``(D, C, k...)`` grows along axis 1 by :func:`extend_channels`; the bias (one per output
    channel) is unchanged; ``in_channels`` follows. The module object stays the same (hooks and wrappers
    keep working); its weight is a new Parameter (same ``requires_grad``).

    Raises:
        ConfigError: As :func:`extend_channels`, or for a grouped convolution.
    """
    from torch import nn

    if not isinstance(conv, nn.Conv1d | nn.Conv2d | nn.Conv3d) or conv.groups != 1:
        raise ConfigError(f"new_channels: expected a Conv1d/2d/3d with groups=1 to grow, got {conv!r}")
    _replace_parameter(conv, "weight", extend_channels(conv.weight, channels, new, rule, dim=1))
    conv.in_channels += len(new)


def grow_linear_input(
    linear: nn.Module,
    channels: Sequence[str],
    new: Sequence[str],
    rule: str,
    order: Literal["channel_first", "channel_last"] = "channel_first",
) -> None:
    """Give a Linear that reads flattened patches one channel more per new channel, in place.

    ``in_features = C * k``: ``order`` says how a patch was flattened, ``"channel_first"`` for
    ``(c k)`` (e.g. ``rearrange(x, "... c p1 p2 -> ... (c p1 p2)")``) or ``"channel_last"`` for ``(k c)``
    (``"(p1 p2 c)"``). The weight is viewed as ``(D, C, k)`` (or ``(D, k, C)``), grown by
    :func:`extend_channels` and flattened back; the bias is unchanged.

    Raises:
        ConfigError: As :func:`extend_channels`, or if ``in_features`` is not a multiple of the channels.
    """
    from torch import nn

    if not isinstance(linear, nn.Linear):
        raise ConfigError(f"new_channels: expected an nn.Linear to grow, got {linear!r}")
    c = len(channels)
    if c == 0 or linear.in_features % c:
        raise ConfigError(
            f"new_channels: the Linear reads {linear.in_features} features, not a multiple of its {c} channels"
        )
    k = linear.in_features // c
    w = linear.weight
    if order == "channel_first":
        grown = extend_channels(w.view(w.shape[0], c, k), channels, new, rule, dim=1)  # (D, C + n, k)
    else:
        grown = extend_channels(w.view(w.shape[0], k, c), channels, new, rule, dim=2)  # (D, k, C + n)
    _replace_parameter(linear, "weight", grown.reshape(w.shape[0], -1))
    linear.in_features = grown.shape[1] * grown.shape[2]


def log_extension(owner: str, channels: Sequence[str], new: Sequence[str], rule: str, layers: Sequence[str]) -> None:
    """The one log line of an extension: which channels, by which rule, in which layers."""
    logger.info(
        f"{owner}: new input channels {', '.join(new)} appended after {', '.join(channels)}; "
        f"pretrained weights kept, new weights from {rule} in {', '.join(layers)}"
    )
