"""Normalisation twins: ``BatchNorm1d/2d`` with a time axis and output quantization."""

from __future__ import annotations

from typing import Any, Dict

from torch import nn

from aquatic.nn.stateless import StatelessTwin

__all__ = ["BatchNorm1d", "BatchNorm2d"]

_DOC = """:class:`torch.nn.{name}` with a time axis, its output quantized by ``qconfig``.

    With ``qconfig=None`` (or no ``activation`` field) the forward pass is
    :class:`torch.nn.{name}`'s own code, bit for bit, and the ``state_dict`` is the
    same. The affine parameters are not quantized: fold them into the layer before with
    :func:`aquatic.fold_batch_norm` for integer models.

    Args:
        qconfig: its ``activation`` field quantizes the output; keyword only. The other
            arguments are :class:`torch.nn.{name}`'s.

    Shape:
        As :class:`torch.nn.{name}`, and with a time axis after the batch, ``{timed}``:
        every step is normalised with the same statistics, taken over batch, time{over}.
        {note}

    Example:
        >>> import torch, aquatic
        >>> bn = aquatic.nn.{name}(3)
        >>> bn(torch.rand(2, 5, {step})).shape  # (N, T, C, ...)
        torch.Size([2, 5, {step}])
    """


def _bn_kwargs(module: nn.Module) -> Dict[str, Any]:
    return dict(
        num_features=module.num_features,
        eps=module.eps,
        momentum=module.momentum,
        affine=module.affine,
        track_running_stats=module.track_running_stats,
    )


class BatchNorm1d(StatelessTwin, nn.BatchNorm1d):
    __doc__ = _DOC.format(
        name="BatchNorm1d",
        timed="(N, T, C, L)",
        over=" and length",
        step="3, 4",
        note="A 3-d input is torch's ``(N, C, L)``, so sequences of vectors "
        "``(N, T, C)`` need ``(N, T, C, 1)``.",
    )
    _float_module = nn.BatchNorm1d
    _batched_dims = 3

    @classmethod
    def _twin_kwargs(cls, module: nn.Module) -> Dict[str, Any]:
        return _bn_kwargs(module)


class BatchNorm2d(StatelessTwin, nn.BatchNorm2d):
    __doc__ = _DOC.format(
        name="BatchNorm2d", timed="(N, T, C, H, W)", over=" and space", step="3, 4, 4", note=""
    )
    _float_module = nn.BatchNorm2d
    _batched_dims = 4

    @classmethod
    def _twin_kwargs(cls, module: nn.Module) -> Dict[str, Any]:
        return _bn_kwargs(module)
