"""The modules that :func:`aquatic.interop.nir.load` builds besides aquatic layers."""

from __future__ import annotations

from typing import Dict, Iterator, List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from aquatic.nn.neuron_base import NeuronModule

__all__ = ["NIRModule", "Scale", "SumPool2d"]

IntPair = Union[int, Tuple[int, int]]


class SumPool2d(nn.Module):
    """Sum pooling over 2-D windows (NIR's ``SumPool2d``): average pooling times the
    window size, computed as an exact sum (``divisor_override=1``).

    Args:
        kernel_size: window size.
        stride: window step (default: ``kernel_size``).
        padding: zero padding on both sides.

    Shape:
        - Input: :math:`(N, C, H, W)`. Output: :math:`(N, C, H_{out}, W_{out})`, as
          :class:`torch.nn.AvgPool2d`.

    Example:
        >>> SumPool2d(2)(torch.arange(16.0).reshape(1, 1, 4, 4))
        tensor([[[[10., 18.],
                  [42., 50.]]]])
    """

    def __init__(
        self, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0
    ) -> None:
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride) if stride is not None else self.kernel_size
        self.padding = _pair(padding)
        for name in ("kernel_size", "stride"):
            if any(not isinstance(v, int) or v < 1 for v in getattr(self, name)):
                raise ValueError(f"{name} must hold positive ints, got {getattr(self, name)}")
        if any(not isinstance(v, int) or v < 0 for v in self.padding):
            raise ValueError(f"padding must hold non-negative ints, got {self.padding}")

    def forward(self, input: Tensor) -> Tensor:
        return F.avg_pool2d(input, self.kernel_size, self.stride, self.padding, divisor_override=1)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class Scale(nn.Module):
    """Multiplies its input elementwise by fixed factors (NIR's ``Scale``).

    Args:
        scale: the factors, of the shape of one step of the input (or broadcasting to it).

    Shape:
        - Input: :math:`(*, S)` where ``scale`` broadcasts to :math:`S`. Output: the same.

    Example:
        >>> Scale(torch.tensor([2.0, 0.5]))(torch.ones(3, 2))
        tensor([[2.0000, 0.5000],
                [2.0000, 0.5000],
                [2.0000, 0.5000]])
    """

    def __init__(self, scale: Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.get_default_dtype()))

    def forward(self, input: Tensor) -> Tensor:
        return input * self.scale.to(input.dtype)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.scale.shape)}"


def _runs_per_step(module: nn.Module) -> bool:
    """Whether ``module`` needs the batch and time axes merged (no state, no time axis)."""
    return not isinstance(module, NeuronModule)


class NIRModule(nn.Module):
    """A feed-forward graph of layers, run on sequences; :func:`~aquatic.interop.nir.load`
    returns one.

    The graph's input node feeds ``input``; each node receives the sum of the outputs of
    the nodes with an edge into it, as in NIR. Spiking and leaky layers (subclasses of
    :class:`aquatic.nn.NeuronModule`) run on the whole sequence ``(N, T, *)``; every other
    layer sees each step on its own: the batch and time axes are merged before it and
    split after it, so convolutions, pooling and ``Flatten`` work per step.

    Args:
        nodes: ``(name, module)`` pairs, each after every node with an edge into it.
        edges: ``(source, target)`` pairs of node names, including ``input_name`` and
            ``output_name``.
        input_name: the name of the graph's input.
        output_name: the name of the graph's output.

    Shape:
        - Input: :math:`(N, T, *)`, batch first, then time. Output: :math:`(N, T, *)`.

    Example:
        >>> import aquatic
        >>> net = NIRModule(
        ...     [("fc", torch.nn.Linear(3, 2)), ("lif", aquatic.nn.LIF(tau_mem=5.0))],
        ...     [("input", "fc"), ("fc", "lif"), ("lif", "output")],
        ... )
        >>> net(torch.zeros(4, 10, 3)).shape
        torch.Size([4, 10, 2])
        >>> type(net["lif"]).__name__, net.names
        ('LIF', ['fc', 'lif'])
    """

    def __init__(
        self,
        nodes: Sequence[Tuple[str, nn.Module]],
        edges: Sequence[Tuple[str, str]],
        input_name: str = "input",
        output_name: str = "output",
    ) -> None:
        super().__init__()
        names = [name for name, _ in nodes]
        for name, module in nodes:
            if not isinstance(name, str) or not isinstance(module, nn.Module):
                raise TypeError(f"nodes must be (str, nn.Module) pairs, got ({name!r}, {module!r})")
        everything = set(names) | {input_name, output_name}
        if len(everything) != len(names) + 2:
            raise ValueError(
                f"node names must be unique and differ from {input_name!r} and "
                f"{output_name!r}; got {names}"
            )
        self.names: List[str] = names
        self.layers = nn.ModuleList(module for _, module in nodes)
        self.edges: List[Tuple[str, str]] = [(str(a), str(b)) for a, b in edges]
        self.input_name = input_name
        self.output_name = output_name
        self._sources: Dict[str, List[str]] = {name: [] for name in names + [output_name]}
        done = {input_name}
        for source, target in self.edges:
            if source not in everything or target not in everything:
                raise ValueError(f"edge ({source!r}, {target!r}) names a node the graph lacks")
            if target == input_name or source == output_name:
                raise ValueError(
                    f"edge ({source!r}, {target!r}) runs into the input or out of the output"
                )
            self._sources[target].append(source)
        for name in names + [output_name]:
            for source in self._sources[name]:
                if source not in done:
                    raise ValueError(
                        f"node {name!r} comes before its source {source!r}; list the nodes "
                        "in an order where every node follows its sources (graphs with "
                        "cycles are not supported)"
                    )
            if not self._sources[name]:
                raise ValueError(f"node {name!r} has no incoming edge")
            done.add(name)

    def __getitem__(self, name: str) -> nn.Module:
        """The layer of node ``name``."""
        try:
            return self.layers[self.names.index(name)]
        except ValueError:
            raise KeyError(f"no node {name!r}; the nodes are {self.names}") from None

    def named_nodes(self) -> Iterator[Tuple[str, nn.Module]]:
        """``(name, layer)`` pairs in the order they run."""
        return zip(self.names, self.layers)

    def forward(self, input: Tensor) -> Tensor:
        if not isinstance(input, Tensor) or input.dim() < 2:
            shape = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
            raise ValueError(
                f"NIRModule expects input of shape (N, T, *) (batch, time, ...), got {shape}"
            )
        values = {self.input_name: input}
        for name, module in zip(self.names, self.layers):
            values[name] = self._run(module, self._gather(values, name))
        return self._gather(values, self.output_name)

    def _gather(self, values: Dict[str, Tensor], name: str) -> Tensor:
        sources = self._sources[name]
        total = values[sources[0]]
        for source in sources[1:]:
            total = total + values[source]
        return total

    @staticmethod
    def _run(module: nn.Module, input: Tensor) -> Tensor:
        if not _runs_per_step(module):
            return module(input)
        batch, steps = input.shape[:2]
        output = module(input.reshape((batch * steps,) + tuple(input.shape[2:])))
        return output.reshape((batch, steps) + tuple(output.shape[1:]))

    def extra_repr(self) -> str:
        return "edges=[" + ", ".join(f"{a} -> {b}" for a, b in self.edges) + "]"
