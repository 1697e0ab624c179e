""":func:`aquatic.convert` for models that are not ``nn.Sequential``: a traced graph
(:func:`aquatic.graph.trace`) becomes an :class:`~aquatic.integer.graph.IntegerGraph`.

Layers (``call_module`` nodes) convert as in a chain (:func:`convert_module`); the
operations between them are handled here (:mod:`aquatic.integer.convert_nodes`). Every
value of the graph carries a :class:`~aquatic.integer.base.QSpec` (the meaning of its
codes) or, for shapes and numbers, ``None``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from aquatic.graph import trace
from aquatic.graph.insert import takes_indices
from aquatic.graph.ops import is_tensor_op, kind
from aquatic.integer.base import IntegerModule, QSpec
from aquatic.integer.build_graph import build_combine
from aquatic.integer.build_sequence import RECURRENT_BUILDERS, one_grid
from aquatic.integer.convert_module import convert_module, input_spec
from aquatic.integer.convert_nodes import NodeContext, convert_node
from aquatic.integer.graph import IntegerGraph, Ref, Step
from aquatic.integer.reading import check_observed, describe
from aquatic.integer.build_attention import build_attention
from aquatic.integer.build_transformer import build_decoder, build_encoder
from aquatic.integer.transformer import INPUT, MEMORY, Program
from aquatic.nn import LSTM, ActivationQuantizer, Add, Cat, MultiheadAttention, Mul

__all__ = ["convert_graph"]

_COMBINE = {Add: "add", Mul: "mul", Cat: "cat"}


class LayerSpecs(list):
    """The grids of the stacked final states of a multi-layer recurrent layer, one per
    layer: ``h_n[k]`` has the spec of layer ``k``."""


def _example(example_input: Any, count: int) -> Tuple[Any, ...]:
    if example_input is None:
        raise ValueError(
            "aquatic.convert needs example_input= for a model that is not nn.Sequential: "
            "one batch of inputs (a tensor, or a tuple with one tensor per forward "
            "argument), from which the graph's shapes are read"
        )
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    if len(inputs) != count:
        raise ValueError(
            f"the model's forward takes {count} inputs, but example_input holds {len(inputs)}; "
            "pass a tuple with one tensor per forward argument"
        )
    return inputs


def _shapes(gm: fx.GraphModule, inputs: Tuple[Any, ...]) -> None:
    """Run the model once on ``inputs`` (eval mode), recording each node's shape."""
    try:
        ShapeProp(gm).propagate(*inputs)
    except Exception as error:
        raise ValueError(
            f"the model does not run on example_input ({type(error).__name__}: {error}); pass "
            "a batch shaped as the model expects"
        ) from error


def _input_quantizer(gm: fx.GraphModule, node: fx.Node) -> Optional[fx.Node]:
    users = list(node.users)
    if len(users) == 1 and users[0].op == "call_module":
        module = gm.get_submodule(users[0].target)
        if isinstance(module, ActivationQuantizer) and "activation" in module.quantizers:
            return users[0]
    return None


class _Builder:
    """Walks the graph, collecting integer modules and steps."""

    def __init__(self, gm: fx.GraphModule, state_frac_bits: int) -> None:
        self.gm = gm
        self.state_frac_bits = state_frac_bits
        self.ops: Dict[str, IntegerModule] = {}
        self.steps: List[Step] = []
        self.specs: Dict[str, Optional[QSpec]] = {}
        self.alias: Dict[str, str] = {}

    def ref(self, node: fx.Node) -> Ref:
        name = node.name
        while name in self.alias:
            name = self.alias[name]
        return Ref(name)

    def refs(self, value: Any) -> Any:
        return fx.node.map_arg(value, self.ref)

    def spec(self, node: Any, where: str) -> QSpec:
        if not isinstance(node, fx.Node) or self.specs.get(node.name) is None:
            raise TypeError(f"{where} takes {node!r}, which is not a tensor of the graph")
        found = self.specs[node.name]
        if not isinstance(found, QSpec):
            raise TypeError(
                f"{where} takes {node.name!r}, the tuple a recurrent layer returns; index "
                "it first (out, h = self.gru(x), or _, (h, c) = self.lstm(x))"
            )
        return found

    def chain(self, node: fx.Node, modules: List[IntegerModule], spec: QSpec, first: Any) -> None:
        """Run ``modules`` one after the other on ``first``; the last result is ``node``."""
        if not modules:
            self.alias[node.name] = first.name if isinstance(first, fx.Node) else str(first)
            self.specs[node.name] = spec
            return
        source: Any = self.refs(first)
        for index, module in enumerate(modules):
            key = node.name if index == len(modules) - 1 else f"{node.name}_{index}"
            self.ops[key] = module
            self.steps.append(Step(key, key, None, (source,), {}))
            source = Ref(key)
        self.specs[node.name] = spec

    def module_node(self, node: fx.Node) -> None:
        module = self.gm.get_submodule(node.target)
        where = describe(node.target, module)
        if type(module) in _COMBINE:
            op = _COMBINE[type(module)]
            tensors = list(node.args[0]) if op == "cat" else list(node.args)
            specs = [self.spec(t, where) for t in tensors]
            combine, spec = build_combine(
                op,
                node.target,
                specs,
                module.quantizers["activation"] if "activation" in module.quantizers else None,
                where,
                getattr(module, "dim", 0),
            )
            self.ops[node.name] = combine
            self.steps.append(Step(node.name, node.name, None, tuple(self.refs(tensors)), {}))
            self.specs[node.name] = spec
            return
        if type(module) in RECURRENT_BUILDERS:
            self.recurrent(node, module, where)
            return
        if isinstance(module, MultiheadAttention):
            self.attention(node, module, where)
            return
        if isinstance(module, (nn.TransformerDecoder, nn.TransformerDecoderLayer)):
            self.decoder(node, module, where)
            return
        if len(node.args) != 1 or node.kwargs:
            raise TypeError(
                f"{where} is called with {len(node.args)} arguments and {len(node.kwargs)} "
                "keyword arguments; the integer model converts layers that take one tensor"
            )
        spec = self.spec(node.args[0], where)
        if isinstance(module, (nn.TransformerEncoder, nn.TransformerEncoderLayer)):
            self.encoder(node, module, spec)
            return
        modules, spec = convert_module(node.target, module, spec, self.state_frac_bits)
        self.chain(node, modules, spec, node.args[0])

    def attention(self, node: fx.Node, module: nn.Module, where: str) -> None:
        """``out, weights = attn(query, key, value, need_weights=False)``: the node's
        value is ``(output, None)``; the integer model computes no attention weights."""
        names = ("query", "key", "value")
        inputs = dict(zip(names, node.args))
        extra = {k: v for k, v in node.kwargs.items() if k not in names}
        inputs.update({k: v for k, v in node.kwargs.items() if k in names})
        given = {k: v for k, v in extra.items() if v not in (None, False)}
        if len(node.args) > 3 or set(inputs) != set(names) or given:
            raise TypeError(
                f"{where} is called with {sorted(set(given) | set(inputs))}; the integer "
                "graph converts query, key and value without masks (and need_weights=False: "
                "it computes no attention weights)"
            )
        specs = [self.spec(inputs[k], where) for k in names]
        layer, spec = build_attention(node.target, module, *specs)
        key = f"{node.name}_output"
        self.ops[key] = layer
        self.steps.append(Step(key, key, None, tuple(self.refs([inputs[k] for k in names])), {}))
        self._function(node.name, "tuple", (Ref(key), None))
        self.specs[node.name] = (spec, None)

    def encoder(self, node: fx.Node, module: nn.Module, spec: QSpec) -> None:
        """A transformer encoder (layer): each integer module of its program a step."""
        program = Program()
        _, spec = build_encoder(node.target, module, spec, program)
        self.program(node, program, {INPUT: node.args[0]}, spec)

    def decoder(self, node: fx.Node, module: nn.Module, where: str) -> None:
        """``decoder(tgt, memory)``, a transformer decoder (layer) without masks: each
        integer module of its program a step."""
        names = ("tgt", "memory")
        inputs = dict(zip(names, node.args))
        inputs.update({k: v for k, v in node.kwargs.items() if k in names})
        extra = {k: v for k, v in node.kwargs.items() if k not in names}
        given = {k: v for k, v in extra.items() if v not in (None, False)}
        if len(node.args) > 2 or set(inputs) != set(names) or given:
            raise TypeError(
                f"{where} is called with {sorted(set(given) | set(inputs))}; the integer "
                "graph converts decoder(tgt, memory) without masks (tgt_mask, memory_mask, "
                "key padding masks and causal flags are refused)"
            )
        program = Program()
        specs = [self.spec(inputs[k], where) for k in names]
        _, spec = build_decoder(node.target, module, *specs, program)
        self.program(node, program, {INPUT: inputs["tgt"], MEMORY: inputs["memory"]}, spec)

    def program(self, node: fx.Node, program: Program, inputs: Dict[str, Any], spec) -> None:
        """Each instruction of ``program`` a step reading the graph values ``inputs``
        (by the program's names for them); the last one's value is ``node``."""
        keys = {name: self.refs(value) for name, value in inputs.items()}
        for step in program:
            key = f"{node.name}.{step.key}".replace(".", "_")
            keys[step.key] = Ref(key)
            self.ops[key] = step.module
            self.steps.append(Step(key, key, None, tuple(keys[a] for a in step.args), {}))
        last = str(keys[program[-1].key])
        self.alias[node.name] = last
        self.specs[node.name] = self.specs[last] = spec  # the graph may return it

    def _function(self, name: str, function: str, args: tuple) -> None:
        self.steps.append(Step(name, None, function, args, {}))

    def recurrent(self, node: fx.Node, layer: nn.Module, where: str) -> None:
        """An RNN, GRU or LSTM, given an initial state or not: one integer module, whose
        value is ``(output, h_n)`` (``(output, (h_n, c_n))``); stacked final states hold
        each layer's codes on that layer's grid (:class:`LayerSpecs`)."""
        args = list(node.args) + [node.kwargs[k] for k in ("hx",) if k in node.kwargs]
        if len(args) not in (1, 2) or set(node.kwargs) - {"hx"}:
            raise TypeError(
                f"{where} is called with {len(node.args)} arguments and keyword arguments "
                f"{sorted(node.kwargs)}; the integer model takes the input and, optionally, "
                "the initial state (hx)"
            )
        spec = self.spec(args[0], where)
        lstm = isinstance(layer, LSTM)
        state = None if len(args) == 1 or args[1] is None else self.state_spec(args[1], lstm, where)
        build = RECURRENT_BUILDERS[type(layer)]
        module, spec = build(node.target, layer, spec, state=state)
        self.ops[node.name] = module
        inputs = (args[0],) if state is None else (args[0], args[1])
        self.steps.append(Step(node.name, node.name, None, tuple(self.refs(inputs)), {}))
        states = {key: _layer_specs(value) for key, value in module.state_specs().items()}
        last = (states["hidden"], states["cell"]) if lstm else states["hidden"]
        self.specs[node.name] = (spec, last)

    def state_spec(self, value: Any, lstm: bool, where: str) -> Any:
        """The spec of a given initial state: ``h_0``, or ``(h_0, c_0)``."""
        if isinstance(value, (tuple, list)):
            parts = [self.specs.get(v.name) if isinstance(v, fx.Node) else None for v in value]
        elif isinstance(value, fx.Node):
            found = self.specs.get(value.name)
            parts = list(found) if isinstance(found, tuple) else [found]
        else:
            parts = [None]
        if len(parts) != (2 if lstm else 1) or any(p is None for p in parts):
            expected = "(h_0, c_0), two tensors" if lstm else "h_0, one tensor"
            raise TypeError(f"{where} is given an initial state that is not {expected}")
        for part in parts:
            if isinstance(part, LayerSpecs):
                raise ValueError(
                    f"{where} is given as initial state the final states of a stacked or "
                    "bidirectional layer, each on its own grid; quantize them onto one grid "
                    "first (an aquatic.nn.ActivationQuantizer)"
                )
        return tuple(parts) if lstm else parts[0]


def _layer_specs(specs: Any) -> Any:
    """One spec, or the specs of stacked final states (:class:`LayerSpecs`) where they
    are on several grids."""
    if not isinstance(specs, list):
        return specs
    shared = one_grid(specs)
    return LayerSpecs(specs) if shared is None else shared


def _check_used_observed(gm: fx.GraphModule) -> None:
    """:func:`check_observed` for the layers the graph runs (a layer the ``forward``
    never calls, such as an auxiliary head, need not have seen data)."""
    used = sorted({node.target for node in gm.graph.nodes if node.op == "call_module"})
    for target in used:
        try:
            check_observed(gm.get_submodule(target))
        except ValueError as error:
            raise ValueError(f"layer {target!r}: {error}") from None


def convert_graph(
    model: nn.Module,
    example_input: Any,
    input_scale: Optional[float],
    input_zero_point: int,
    input_range: Optional[Sequence[int]],
    state_frac_bits: int,
) -> IntegerGraph:
    """The :class:`IntegerGraph` of ``model`` (see :func:`aquatic.convert`)."""
    gm = model if isinstance(model, fx.GraphModule) else trace(model, "aquatic.convert")
    # Arguments with a default were fixed to it when tracing: they are no inputs.
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder" and not n.args]
    inputs = _example(example_input, len(placeholders))
    _check_used_observed(gm)
    modes = {id(m): m.training for m in gm.modules()}
    gm.eval()
    try:
        with torch.no_grad():
            _shapes(gm, inputs)
            return _build(
                gm, placeholders, input_scale, input_zero_point, input_range, state_frac_bits
            )
    finally:
        for m in gm.modules():
            m.training = modes[id(m)]


def _build(gm, placeholders, input_scale, input_zero_point, input_range, state_frac_bits):
    builder = _Builder(gm, state_frac_bits)
    layers = [(name, m) for name, m in gm.named_modules() if name]
    edges = []
    consumed = set()
    for node in placeholders:
        quant = _input_quantizer(gm, node)
        first = gm.get_submodule(quant.target) if quant is not None else nn.Identity()
        if quant is None and takes_indices(gm, node):  # row indices of an embedding
            tables = [gm.get_submodule(user.target) for user in node.users]
            first = min(tables, key=lambda table: table.num_embeddings)
        # input_scale is for the inputs that no quantizer takes first
        scale = None if quant is not None else input_scale
        spec, rounding, on_grid, notes, _ = input_spec(
            first, layers, scale, input_zero_point, input_range
        )
        edges.append((node.name, spec, rounding, on_grid, notes))
        builder.specs[node.name] = spec
        if quant is not None:
            consumed.add(quant.name)
            builder.alias[quant.name] = node.name
            builder.specs[quant.name] = spec
    if input_scale is not None and placeholders and len(consumed) == len(placeholders):
        raise ValueError(
            "every input of the model is taken by an ActivationQuantizer, which sets its "
            "scale; do not pass input_scale as well"
        )
    context = NodeContext(builder)
    non_tensor: set = set()
    output = None
    fixed = set()  # arguments fixed to their default, and the checks fx adds for them
    for node in gm.graph.nodes:
        if node.op == "placeholder" and node.args:
            fixed.add(node.name)
            continue
        inputs = node.all_input_nodes
        if node.op != "output" and inputs and all(n.name in fixed for n in inputs):
            fixed.add(node.name)
            continue
        if node.op == "placeholder" or node.name in consumed:
            continue
        if node.op == "output":
            output = node.args[0]
            continue
        if node.op == "get_attr":
            raise TypeError(
                f"the forward uses the tensor attribute {node.target!r} directly; the integer "
                "model converts layers only: move the computation with it into a layer"
            )
        if node.op == "call_module":
            builder.module_node(node)
            continue
        if not is_tensor_op(node, non_tensor):
            non_tensor.add(node.name)
        convert_node(context, node, kind(node), node.name in non_tensor)
    specs = _output_specs(builder, output)
    return IntegerGraph(builder.ops, builder.steps, edges, builder.refs(output), specs)


def _stacked_states(specs: Any) -> bool:
    if isinstance(specs, LayerSpecs):
        return True
    return isinstance(specs, tuple) and any(_stacked_states(s) for s in specs)


def _output_specs(builder: _Builder, output: Any) -> Any:
    if isinstance(output, fx.Node):
        found = builder.specs.get(builder.ref(output))
        if _stacked_states(found):
            raise TypeError(
                f"the model returns {output.name!r}, the final states of all layers and "
                "directions of a stacked or bidirectional recurrent layer, each on its own "
                "grid; return one layer's (h[-1])"
            )
        return found
    if isinstance(output, (list, tuple)):
        return type(output)(_output_specs(builder, value) for value in output)
    raise TypeError(
        f"the model returns {type(output).__name__}; the integer graph returns a tensor, or "
        "a tuple or list of them"
    )
