"""What quantization-aware training costs: training-step time of int8 QAT models / float.

For four models, an MLP (784-256-256-10), a wider MLP (784-512-512-10), a small CNN
(two 3x3 convolutions and a linear layer on 28x28 inputs) and a recurrent cell written
by hand that reads the 28x28 input row by row (``rows``: two ``Linear`` layers called at
each of 28 time steps, as a spiking or recurrent cell is in a Python loop), times one
training step
(forward, cross-entropy, backward, SGD step; batch 64, a new batch each step from
:data:`BATCHES` random ones) of the float model and of QAT versions of it, and prints
the median step times and the ratios QAT / float.

Per-tensor int8 weights and activations:

- aquatic: ``aquatic.quantize(model, aquatic.qconfig.int8)``;
- torch.ao eager QAT: ``prepare_qat`` with ``default_qat_qconfig`` and with
  ``default_qat_qconfig_v2`` (the same, fused observer and fake quantization);
- Brevitas: ``QuantLinear``/``QuantConv2d`` with int8 per-tensor weight and output
  quantizers.

Per-channel int8 weights (per-tensor activations as above):

- aquatic: ``aquatic.qconfig.int8`` with ``weight=UniformQuantizer.with_args(bits=8,
  ch_axis=0)``;
- torch.ao: ``default_per_channel_weight_fake_quant``, and the fused
  ``default_fused_per_channel_wt_fake_quant`` with ``default_fused_act_fake_quant``;
- Brevitas: ``Int8WeightPerChannelFloat`` weights;
- torchao: ``QATConfig`` with int8 dynamic per-token activations and int8 per-channel
  symmetric weights (``IntxFakeQuantizeConfig``). torchao fake-quantizes ``nn.Linear``
  only: on the CNN its convolutions stay in float, which its row says.

Compiled: ``torch.compile`` of the float model and of the aquatic QAT models, each
ratio taken to the compiled float model (``--no-compile`` leaves them out). On a small
CPU model, compiled steps can be slower than eager ones for float too; the compiled
float row gives its ratio to eager float.

A peer that is not installed gets a row that says so. Variants are timed in interleaved
rounds, so that a change of machine load affects all of them alike; the ratio printed is
the median over rounds of each round's ratio of median step times, with the spread
(10th to 90th percentile of the per-round ratios). Usage::

    python benchmarks/qat_overhead.py [--threads 2] [--rounds 60] [--steps 5]
        [--models mlp,mlp512,cnn,rows] [--no-compile] [--ablate]

On the recurrent cell, a row ``aquatic, versions trusted`` adds
:func:`aquatic.trust_weight_versions`: a layer's repeat skips the comparison of its
weight's bits.

``--ablate`` adds aquatic's two int8 models with the compiled fake-quantization loops
(:mod:`aquatic.functional.fake_quant_jit`, with Numba) turned off: the PyTorch
operations, the same bits.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import statistics
import time
import warnings
from typing import Callable, Dict, List, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

import aquatic
from aquatic.quantizers import UniformQuantizer


def mlp(width: int = 256) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, 10),
    )


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 10),
    )


class Rows(nn.Module):
    """The 28 rows of a 28x28 image as 28 time steps of a recurrent cell,
    :math:`h_t = \\tanh(W_{in} x_t + W_{rec} h_{t-1})`, then a linear read-out: the
    cell's two layers run 28 times a step on the same weights."""

    def __init__(self, hidden: int = 256) -> None:
        super().__init__()
        self.inp = nn.Linear(28, hidden)
        self.rec = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 10)

    def forward(self, x):
        rows = x.reshape(x.shape[0], 28, 28)
        h = torch.zeros(x.shape[0], self.rec.in_features)
        for t in range(rows.shape[1]):
            h = torch.tanh(self.inp(rows[:, t]) + self.rec(h))
        return self.out(h)


MODELS: Dict[str, Callable[[], nn.Module]] = {
    "mlp": mlp,
    "mlp512": lambda: mlp(512),
    "cnn": cnn,
    "rows": Rows,
}

#: aquatic's int8 preset with per-output-channel weights.
INT8_PER_CHANNEL = aquatic.qconfig.int8._replace(
    weight=UniformQuantizer.with_args(bits=8, signed=True, symmetric=True, ch_axis=0)
)


class Variant(NamedTuple):
    """A model to time, the variant its ratio is taken to, and a note for its row."""

    model: Optional[nn.Module]
    reference: str = "float"
    note: str = ""


def _optional(name: str):
    """The module ``name``, or ``None`` when it is not installed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except ImportError:
        return None


def torch_ao(model: nn.Module, fused: bool, per_channel: bool) -> nn.Module:
    tq = importlib.import_module("torch.ao.quantization")
    model = copy.deepcopy(model).train()
    if not per_channel:
        model.qconfig = tq.default_qat_qconfig_v2 if fused else tq.default_qat_qconfig
    elif fused:
        model.qconfig = tq.QConfig(
            activation=tq.default_fused_act_fake_quant,
            weight=tq.default_fused_per_channel_wt_fake_quant,
        )
    else:
        model.qconfig = tq.QConfig(
            activation=tq.default_fake_quant, weight=tq.default_per_channel_weight_fake_quant
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tq.prepare_qat(model)


def brevitas(model: nn.Module, per_channel: bool) -> Optional[nn.Module]:
    bnn = _optional("brevitas.nn")
    if bnn is None:
        return None
    quant = importlib.import_module("brevitas.quant")
    weight = quant.Int8WeightPerChannelFloat if per_channel else quant.Int8WeightPerTensorFloat
    kwargs = dict(
        weight_quant=weight, output_quant=quant.Int8ActPerTensorFloat, return_quant_tensor=False
    )
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, module in list(parent.named_children()):
            if isinstance(module, nn.Linear):
                new = bnn.QuantLinear(module.in_features, module.out_features, bias=True, **kwargs)
            elif isinstance(module, nn.Conv2d):
                new = bnn.QuantConv2d(
                    module.in_channels,
                    module.out_channels,
                    module.kernel_size,
                    padding=module.padding,
                    bias=True,
                    **kwargs,
                )
            else:
                continue
            new.load_state_dict(module.state_dict(), strict=False)
            setattr(parent, name, new)
    return model.train()


def torchao(model: nn.Module) -> Optional[nn.Module]:
    """torchao QAT: int8 dynamic per-token activations, int8 per-channel weights."""
    quantization = _optional("torchao.quantization")
    if quantization is None:
        return None
    qat = importlib.import_module("torchao.quantization.qat")
    model = copy.deepcopy(model).train()
    config = qat.QATConfig(
        activation_config=qat.IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False),
        weight_config=qat.IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=True),
        step="prepare",
    )
    quantization.quantize_(model, config)
    return model


def compiled(model: nn.Module) -> nn.Module:
    # The compiled variants share code objects (nn.Sequential.forward, the quantizer
    # template), and dynamo keeps at most `recompile_limit` graphs per code object before
    # it falls back to eager: with several compiled models in one process that limit, not
    # aquatic, would decide which steps run compiled.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(model)


class WithoutLoops(nn.Module):
    """``model`` with aquatic's compiled fake-quantization loops turned off
    (:data:`aquatic.functional.fake_quant_jit.ENABLED`) while it runs: its PyTorch
    operations, the same bits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        loops = importlib.import_module("aquatic.functional.fake_quant_jit")
        before, loops.ENABLED = loops.ENABLED, False
        try:
            return self.model(x)
        finally:
            loops.ENABLED = before


def variants(
    float_model: nn.Module, compile_rows: bool, ablate: bool = False
) -> Dict[str, Variant]:
    convs = any(isinstance(m, nn.Conv2d) for m in float_model.modules())
    result = {
        "float": Variant(float_model),
        "aquatic": Variant(aquatic.quantize(float_model, aquatic.qconfig.int8)),
        "torch.ao": Variant(torch_ao(float_model, fused=False, per_channel=False)),
        "torch.ao fused": Variant(torch_ao(float_model, fused=True, per_channel=False)),
        "brevitas": Variant(brevitas(float_model, per_channel=False)),
        "aquatic pc": Variant(aquatic.quantize(float_model, INT8_PER_CHANNEL)),
        "torch.ao pc": Variant(torch_ao(float_model, fused=False, per_channel=True)),
        "torch.ao fused pc": Variant(torch_ao(float_model, fused=True, per_channel=True)),
        "brevitas pc": Variant(brevitas(float_model, per_channel=True)),
        "torchao pc": Variant(
            torchao(float_model),
            note="Linear layers only; Conv2d left in float" if convs else "",
        ),
    }
    if isinstance(float_model, Rows):  # layers called again and again
        trusted = aquatic.quantize(float_model, aquatic.qconfig.int8)
        aquatic.trust_weight_versions(trusted)
        result["aquatic, versions trusted"] = Variant(trusted, note="trust_weight_versions")
    if ablate:
        for name, qconfig in (("", aquatic.qconfig.int8), (" pc", INT8_PER_CHANNEL)):
            result[f"aquatic{name}, operations"] = Variant(
                WithoutLoops(aquatic.quantize(float_model, qconfig)),
                note="compiled loops off",
            )
    if compile_rows:
        result["float compiled"] = Variant(compiled(float_model), note="ratio to eager float")
        result["aquatic compiled"] = Variant(
            compiled(aquatic.quantize(float_model, aquatic.qconfig.int8)), "float compiled"
        )
        result["aquatic pc compiled"] = Variant(
            compiled(aquatic.quantize(float_model, INT8_PER_CHANNEL)), "float compiled"
        )
    return result


#: Batches a training step cycles through: a new batch each step, as in training (with
#: one batch over and over, moving-average ranges settle on its extrema and no code
#: ever clips, which real data does not allow).
BATCHES = 8


def make_step(model: nn.Module) -> Callable[[], None]:
    generator = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.randn(64, 1, 28, 28, generator=generator),
            torch.randint(0, 10, (64,), generator=generator),
        )
        for _ in range(BATCHES)
    ]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    count = [0]

    def step() -> None:
        x, y = batches[count[0] % BATCHES]
        count[0] += 1
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


class Result(NamedTuple):
    seconds: float  # median step time
    ratio: float  # median over rounds of the per-round ratio to the reference
    low: float  # 10th percentile of the per-round ratios
    high: float  # 90th percentile


def _quantile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(
    models: Dict[str, Variant],
    rounds: int,
    steps: int,
    make: Callable[[nn.Module], Callable[[], None]] = make_step,
) -> Dict[str, Result]:
    """Median step time (seconds) of each model and its median per-round ratio.

    Each round times ``steps`` steps of every model in turn; the ratio of a round is
    the ratio of its medians (model / its reference variant), so a burst of load on the
    machine that hits one round moves one of many ratios, not the result. ``make``
    builds a model's training step.
    """
    runners = {name: make(v.model) for name, v in models.items()}
    for run in runners.values():  # warm-up: allocator, observers' first batch, compiling
        for _ in range(10):
            run()
    times: Dict[str, List[float]] = {name: [] for name in runners}
    ratios: Dict[str, List[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        medians = {}
        for name, run in runners.items():
            samples = []
            for _ in range(steps):
                start = time.perf_counter()
                run()
                samples.append(time.perf_counter() - start)
            times[name].extend(samples)
            medians[name] = statistics.median(samples)
        for name, variant in models.items():
            ratios[name].append(medians[name] / medians[variant.reference])
    return {
        name: Result(
            statistics.median(times[name]),
            statistics.median(ratios[name]),
            _quantile(ratios[name], 0.1),
            _quantile(ratios[name], 0.9),
        )
        for name in runners
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--steps", type=int, default=5, help="steps per round and variant")
    parser.add_argument("--models", default="mlp,mlp512,cnn,rows", help="comma-separated")
    parser.add_argument("--no-compile", action="store_true", help="leave out compiled rows")
    parser.add_argument(
        "--ablate", action="store_true", help="add aquatic with its compiled loops turned off"
    )
    args = parser.parse_args()
    names = [name for name in args.models.split(",") if name]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, aquatic {aquatic.__version__}, {args.threads} threads, "
        f"batch 64, {args.rounds} rounds of {args.steps} steps per variant"
    )
    print(
        f"{'model':<7} {'variant':<24} {'median step (ms)':>17} {'ratio':>7} "
        f"{'p10-p90':>12}  reference"
    )
    # Rows's loop (over a tensor's shape) is not a graph torch.fx can trace: quantize says
    # so, and quantizes its layers (no quantizers where tensors meet), which is measured.
    warnings.filterwarnings("ignore", message="aquatic.quantize cannot follow the forward of Rows")
    for name in names:
        torch.manual_seed(0)
        every = variants(MODELS[name](), not args.no_compile, args.ablate)
        present = {k: v for k, v in every.items() if v.model is not None}
        results = measure(present, args.rounds, args.steps)
        for variant, spec in every.items():
            if spec.model is None:
                print(f"{name:<7} {variant:<24} {'not installed':>17}")
                continue
            r = results[variant]
            spread = f"{r.low:.2f}-{r.high:.2f}"
            reference = "" if variant == "float" else spec.reference
            note = f"  ({spec.note})" if spec.note else ""
            print(
                f"{name:<7} {variant:<24} {r.seconds * 1e3:>17.3f} {r.ratio:>6.2f}x "
                f"{spread:>12}  {reference}{note}"
            )


if __name__ == "__main__":
    main()
