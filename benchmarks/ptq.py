"""Post-training quantization of trained float models on the bundled digits data set.

Trains, in float on scikit-learn's 8x8 digits (as ``python -m aquatic.demo`` does),
a 64-128-128-10 perceptron (``--model mlp``) and a small depthwise-separable CNN
(``--model cnn``: a 3x3 stem, three depthwise 3x3 + pointwise 1x1 blocks, a Linear
head; batch norms folded after training), by default both. Then, with 10 calibration
batches of 64 training images, it reports test accuracy for:

- int8 PTQ: ``aquatic.quantize(model, aquatic.qconfig.int8)`` + ``aquatic.calibrate``;
- 4-, 3- and 2-bit weights (per output channel, activations float) with min/max
  ranges, MSE-optimal ranges, and MSE ranges + bias correction;
- mixed precision (``aquatic.mixed_precision``, candidates 2, 4, 8 bits, or 1 (binary),
  2, 3, 4, 8 bits; MSE ranges; the result calibrated with bias correction, and with
  ``--judge-corrected`` each layer judged after it too) at the weight-byte size of
  uniform 3-bit and of uniform 2-bit weights, against uniform weights of that size,
  straight after calibration and after the same short QAT fine-tune (5 epochs, Adam,
  lr 1e-3, ranges frozen), with the paired differences (mixed minus uniform, seed by
  seed);
- 4- and 3-bit weights whose per-channel clip minimises the layer's output error on the
  calibration inputs rather than the weight's own error (+ bias correction);
- torch.ao eager-mode PTQ (x86 default qconfig: per-channel int8 weights, histogram
  int8 activations) as a reference row, when the quantized engine is available;
- with ``--adaround``: the uniform widths with learned rounding
  (``aquatic.calibrate(..., rounding="adaround")`` after MSE ranges, without and with
  bias correction), and the mixed precision above with it on both sides (judged with
  it, ``rounding_iters`` 300 in the analysis; calibrated with it and bias correction).

Paired differences (seed by seed, mean +- standard error, wins/losses) follow the
tables: int8 minus float, the 4- and 3-bit variants minus min/max, learned minus
nearest rounding, and mixed minus uniform at each size.

Every figure is the mean over ``--seeds`` seeds (each its own data split, float
training and fine-tune order): one test image is 0.22 percentage points, and single
seeds differ by more than the effects measured.

Usage::

    python benchmarks/ptq.py [--model all|mlp|cnn] [--epochs N] [--seed 0] [--seeds 10]
    python benchmarks/ptq.py --model cnn     # the CNN alone (about 3 min on one core)
    python benchmarks/ptq.py --allocations   # every MLP allocation at the 3-bit size
    python benchmarks/ptq.py --adaround      # also learned rounding (slow: many minutes)
    python benchmarks/ptq.py --allocations --adaround   # the allocations, learned rounding

Needs scikit-learn (``pip install -e '.[demo]'``).
"""

from __future__ import annotations

import argparse
import copy
import math
import time
import warnings
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

import aquatic
from aquatic.demo import load_digits
from aquatic.observers import MinMaxObserver, MSEObserver
from aquatic.ptq import weight_qconfig
from aquatic.ptq.layer_sensitivity import analysed
from aquatic.qconfig import QConfig
from aquatic.quantizers import UniformQuantizer

Row = Tuple[str, str, float]
QatRow = Tuple[str, float, float]

ADAROUND = "MSE + AdaRound + bias corr."


def make_mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    )


def _separable(channels: int, out: int, stride: int) -> List[nn.Module]:
    """A depthwise 3x3 convolution, then a pointwise 1x1 one, each with batch norm."""
    return [
        nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.Conv2d(channels, out, 1, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU(),
    ]


def make_cnn(width: int = 16) -> nn.Sequential:
    """A depthwise-separable CNN (the MobileNet block) on the 1x8x8 digit images.

    A 3x3 stem convolution (``width`` channels), three depthwise 3x3 + pointwise 1x1
    blocks (to ``2 * width``, then, at stride 2, ``4 * width`` channels twice), global
    average pooling and a Linear head: 8 layers with weights, the depthwise ones 9
    weights per channel, the pointwise ones most of the bytes. Batch norms are folded
    (:func:`aquatic.fold_batch_norm`) after training, before any quantization.
    """
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, width, 3, 1, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        *_separable(width, 2 * width, 1),
        *_separable(2 * width, 4 * width, 2),
        *_separable(4 * width, 4 * width, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * width, 10),
    )


#: Per model: its builder, its title, and its float training (epochs, Adam learning
#: rate, one-cycle schedule or constant).
MODELS = {
    "mlp": (make_mlp, "Digits MLP 64-128-128-10", 40, 1e-3, False),
    "cnn": (make_cnn, "Digits depthwise-separable CNN (16-32-64-64, 8 layers)", 20, 3e-3, True),
}


def train(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epochs: int,
    lr: float,
    seed: int,
    one_cycle: bool = False,
) -> None:
    """Adam on batches of 64, at ``lr`` or on a one-cycle schedule peaking at it."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(len(x) / 64)
    schedule = None
    if one_cycle:
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), 64):
            batch = order[i : i + 64]
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
    model.eval()


def trained(kind: str, seed: int, epochs: Optional[int]) -> Tuple[nn.Module, Tuple[Tensor, ...]]:
    """The float model ``kind`` trained on seed ``seed``'s split (batch norms folded), and
    ``(x_train, y_train, x_test, y_test)``."""
    make, _, default_epochs, lr, one_cycle = MODELS[kind]
    data = load_digits(seed=seed)
    torch.manual_seed(seed)
    model = make()
    epochs = default_epochs if epochs is None else epochs
    train(model, data[0], data[1], epochs, lr, seed, one_cycle)
    return aquatic.fold_batch_norm(model.eval()), data


def layer_names(model: nn.Module) -> List[str]:
    """The layers :func:`aquatic.quantize` gives weight quantizers (Linear, convolutions)."""
    return [name for name, module in model.named_modules() if analysed(module)]


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    return 100.0 * (model(x).argmax(dim=1) == y).float().mean().item()


def weight_bytes(model: nn.Module, bits: dict) -> int:
    layers = dict(model.named_modules())
    return sum(math.ceil(layers[n].weight.numel() * b / 8) for n, b in bits.items())


def uniform(model: nn.Module, bits: int, observer, calib, **options) -> nn.Module:
    qmodel = aquatic.quantize(model, weight_qconfig(bits, observer=observer))
    return aquatic.calibrate(qmodel, calib, progress=False, **options)


@torch.no_grad()
def output_mse_qconfigs(model: nn.Module, bits: int, calib: List[Tensor]) -> Dict[str, QConfig]:
    r"""Per layer, symmetric per-channel ``bits``-bit weights whose clip minimises the
    layer's output error on the calibration inputs, not the weight's own error.

    Output channel ``c`` of a Linear layer errs by :math:`\Delta_c x` for the rounding
    error :math:`\Delta_c` of its weight row, so its mean squared output error is
    :math:`\Delta_c \Sigma \Delta_c^T` with :math:`\Sigma = E[x x^T]` the second moment
    of the layer's (float) inputs; a convolution is the same with :math:`x` the input
    patches of the channel's group (``unfold``). Each channel's clip is the one of 81
    (20% to 100% of the channel's largest magnitude) with the least such error. The
    scales are then fixed.
    """
    layers = dict(model.named_modules())
    names = layer_names(model)
    inputs: Dict[str, List[Tensor]] = {name: [] for name in names}
    handles = [
        layers[name].register_forward_pre_hook(
            lambda module, args, name=name: inputs[name].append(args[0])
        )
        for name in names
    ]
    for batch in calib:
        model(batch)
    for handle in handles:
        handle.remove()
    top = 2 ** (bits - 1) - 1  # narrow range: codes -top..top
    ratios = torch.linspace(0.2, 1.0, 81, dtype=torch.float64)
    mapping = {}
    for name in names:
        layer = layers[name]
        x = torch.cat(inputs[name]).double()
        w = layer.weight.double().flatten(1)  # (channel, inputs per channel)
        groups = getattr(layer, "groups", 1)
        if isinstance(layer, nn.Conv2d):
            x = nn.functional.unfold(
                x, layer.kernel_size, layer.dilation, layer.padding, layer.stride
            )  # (N, C_in * kh * kw, positions)
            x = x.transpose(1, 2).reshape(-1, x.shape[1])
        elif not isinstance(layer, nn.Linear):
            raise TypeError(f"output_mse_qconfigs: {type(layer).__name__} is not supported")
        x = x.reshape(len(x), groups, -1).transpose(0, 1)  # (group, sample, inputs)
        moment = x.transpose(1, 2) @ x / x.shape[1]  # (group, inputs, inputs)
        moment = moment.repeat_interleave(len(w) // groups, dim=0)  # per output channel
        largest = w.abs().amax(dim=1).clamp_min(1e-12)  # an all-zero channel: any scale
        scales = largest[None, :] * ratios[:, None] / top  # (ratio, channel)
        steps = torch.clamp(torch.round(w[None] / scales[..., None]), -top, top)
        error = steps * scales[..., None] - w[None]
        cost = torch.einsum("rci,cij,rcj->rc", error, moment, error)
        best = scales.gather(0, cost.argmin(dim=0, keepdim=True))[0]
        weight = UniformQuantizer.with_args(
            bits=bits, narrow_range=True, ch_axis=0, scale=best.float()
        )
        mapping[name] = QConfig(weight=weight)
    return mapping


def torch_ao_ptq(model: nn.Module, calib: List[Tensor], x: Tensor, y: Tensor) -> Optional[float]:
    try:
        from torch.ao import quantization as tq

        engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"
        torch.backends.quantized.engine = engine
        wrapped = nn.Sequential(tq.QuantStub(), copy.deepcopy(model), tq.DeQuantStub()).eval()
        wrapped.qconfig = tq.get_default_qconfig(engine)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepared = tq.prepare(wrapped)
            with torch.no_grad():
                for batch in calib:
                    prepared(batch)
            converted = tq.convert(prepared)
        return accuracy(converted, x, y)
    except Exception as error:  # the reference row is optional
        print(f"(torch.ao PTQ unavailable: {type(error).__name__}: {error})")
        return None


#: Learned rounding after MSE ranges, then bias correction, as the AdaRound rows calibrate.
_LEARNED = dict(bias_correction=True, rounding="adaround")


def run(seed: int, args: argparse.Namespace) -> Tuple[List[Row], List[QatRow]]:
    """Every row of the tables for one seed (data split, float training, fine-tune)."""
    model, (x_train, y_train, x_test, y_test) = trained(args.model, seed, args.epochs)
    layers = layer_names(model)
    calib = [x_train[i : i + 64] for i in range(0, 640, 64)]
    rows: List[Row] = []
    float_acc = accuracy(model, x_test, y_test)
    all_bytes = {n: 32 for n in layers}
    rows.append(("float32", f"{weight_bytes(model, all_bytes)}", float_acc))

    int8 = aquatic.calibrate(aquatic.quantize(model, aquatic.qconfig.int8), calib, progress=False)
    rows.append(("int8 PTQ (aquatic.qconfig.int8)", "", accuracy(int8, x_test, y_test)))
    reference = torch_ao_ptq(model, calib, x_test, y_test)
    if reference is not None:
        rows.append(("int8 PTQ, torch.ao eager (x86 qconfig)", "", reference))

    for bits in (4, 3, 2):
        size = str(weight_bytes(model, {n: bits for n in layers}))
        minmax = uniform(model, bits, MinMaxObserver, calib)
        mse = uniform(model, bits, MSEObserver, calib)
        corrected = uniform(model, bits, MSEObserver, calib, bias_correction=True)
        rows.append((f"{bits}-bit weights, min/max", size, accuracy(minmax, x_test, y_test)))
        rows.append((f"{bits}-bit weights, MSE", size, accuracy(mse, x_test, y_test)))
        rows.append(
            (f"{bits}-bit weights, MSE + bias corr.", size, accuracy(corrected, x_test, y_test))
        )
        if bits > 2:
            careful = aquatic.quantize(model, output_mse_qconfigs(model, bits, calib))
            careful = aquatic.calibrate(careful, calib, progress=False, bias_correction=True)
            label = f"{bits}-bit weights, output-MSE + bias corr."
            rows.append((label, size, accuracy(careful, x_test, y_test)))
        if args.adaround:
            learned = uniform(model, bits, MSEObserver, calib, rounding="adaround")
            rows.append(
                (f"{bits}-bit weights, MSE + AdaRound", size, accuracy(learned, x_test, y_test))
            )
            learned = uniform(model, bits, MSEObserver, calib, **_LEARNED)
            rows.append(
                (f"{bits}-bit weights, {ADAROUND}", size, accuracy(learned, x_test, y_test))
            )

    qat_rows: List[QatRow] = []
    for bits, configurations in ((3, ((2, 4, 8), (1, 2, 3, 4, 8))), (2, ((1, 2, 3, 4, 8),))):
        budget = weight_bytes(model, {n: bits for n in layers})
        same = uniform(model, bits, MSEObserver, calib, bias_correction=True)
        variants = [(f"uniform {bits}-bit", same)]
        for candidates in configurations:
            mapping = aquatic.mixed_precision(
                model,
                calib,
                budget=budget,
                candidates=candidates,
                progress=False,
                bias_correction=args.judge_corrected,
            )
            mixed = aquatic.calibrate(
                aquatic.quantize(model, mapping), calib, progress=False, bias_correction=True
            )
            choices = ",".join(map(str, candidates))
            label = f"mixed of {{{choices}}} at {bits}-bit size"
            rows.append((label, str(mapping.cost), accuracy(mixed, x_test, y_test)))
            print(f"seed {seed}: {label}: bits {mapping.bits}")
            variants.append((label, mixed))
            if args.adaround:
                mapping = aquatic.mixed_precision(
                    model,
                    calib,
                    budget=budget,
                    candidates=candidates,
                    progress=False,
                    rounding="adaround",
                    rounding_iters=300,
                )
                for suffix, options in (("", {}), (" + bias corr.", _LEARNED)):
                    options = dict(options, rounding="adaround")
                    mixed = aquatic.quantize(model, mapping)
                    mixed = aquatic.calibrate(mixed, calib, progress=False, **options)
                    name = f"{label}, AdaRound{suffix}"
                    rows.append((name, str(mapping.cost), accuracy(mixed, x_test, y_test)))
                print(f"seed {seed}: {label}, AdaRound: bits {mapping.bits}")
        for name, qmodel in variants:
            before = accuracy(qmodel, x_test, y_test)
            train(qmodel, x_train, y_train, args.qat_epochs, args.qat_lr, seed)
            qat_rows.append((name, before, accuracy(qmodel, x_test, y_test)))
    return rows, qat_rows


#: Every allocation of the MLP at the weight-byte size of uniform 3-bit weights that no other
#: allocation of that size dominates (each layer as wide or wider), widths 1 to 8: what mixed
#: precision could choose there.
THREE_BIT_SIZE = ((3, 3, 3), (2, 3, 8), (4, 2, 8), (5, 2, 3), (1, 4, 3), (6, 1, 8), (7, 1, 3))


def allocations(seeds: range, args: argparse.Namespace) -> None:
    """Accuracy after calibration of each allocation of the MLP at the 3-bit size,
    against 3/3/3."""
    accs = []
    for seed in seeds:
        model, (x_train, _, x_test, y_test) = trained("mlp", seed, args.epochs)
        calib = [x_train[i : i + 64] for i in range(0, 640, 64)]
        row = []
        for widths in THREE_BIT_SIZE:
            mapping = {n: weight_qconfig(b) for n, b in zip(layer_names(model), widths)}
            qmodel = aquatic.quantize(model, mapping)
            options = _LEARNED if args.adaround else dict(bias_correction=True)
            qmodel = aquatic.calibrate(qmodel, calib, progress=False, **options)
            row.append(accuracy(qmodel, x_test, y_test))
        accs.append(row)
    how = ADAROUND if args.adaround else "MSE + bias corr."
    print(f"\nEvery allocation at the 3-bit size ({how}), minus uniform 3-bit")
    for k, widths in enumerate(THREE_BIT_SIZE):
        mlp = make_mlp()
        size = weight_bytes(mlp, dict(zip(layer_names(mlp), widths)))
        column = [row[k] for row in accs]
        paired = _paired(column, [row[0] for row in accs])
        label = "/".join(map(str, widths))
        print(f"{label:<8} {size:>6} bytes {_mean_std(column):>16} {paired:>24}")


def _pairs(names: Dict[str, List[float]]) -> List[Tuple[str, str]]:
    """The comparisons the acceptance criteria ask for, among the rows there are."""
    pairs = [
        ("int8 PTQ (aquatic.qconfig.int8)", "float32"),
        ("int8 PTQ, torch.ao eager (x86 qconfig)", "float32"),
    ]
    pairs += [
        (f"{b}-bit weights, {how}", f"{b}-bit weights, min/max")
        for b in (4, 3)
        for how in ("MSE + bias corr.", "output-MSE + bias corr.", "MSE + AdaRound", ADAROUND)
    ]
    pairs += [
        (f"{b}-bit weights, {how}", f"{b}-bit weights, MSE + bias corr.")
        for b in (3, 2)
        for how in ("MSE + AdaRound", ADAROUND)
    ]
    for name in names:
        if name.startswith("mixed") and "AdaRound" in name:
            bits = name.split(" at ")[1].split("-")[0]
            how = ADAROUND if name.endswith("bias corr.") else "MSE + AdaRound"
            pairs.append((name, f"{bits}-bit weights, {how}"))
            pairs.append((name, f"{bits}-bit weights, MSE + bias corr."))
    return [(a, b) for a, b in pairs if a in names and b in names]


def _mean_std(values: List[float]) -> str:
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.2f}"
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{mean:.2f} +- {std:.2f}"


def _paired(mixed: List[float], uniform: List[float]) -> str:
    """Mean and standard error of the paired differences, with wins/losses."""
    diffs = [m - u for m, u in zip(mixed, uniform)]
    mean = sum(diffs) / len(diffs)
    sem = 0.0
    if len(diffs) > 1:
        sem = (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs)) ** 0.5
    wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    return f"{mean:+.2f} +- {sem:.2f} ({wins}W/{losses}L)"


def report(kind: str, seeds: range, args: argparse.Namespace) -> None:
    """Every table for model ``kind`` over ``seeds``."""
    start = time.perf_counter()
    args = argparse.Namespace(**vars(args), model=kind)
    results = [run(seed, args) for seed in seeds]
    rows: Dict[str, List[float]] = {}
    sizes: Dict[str, List[str]] = {}
    qat: Dict[str, Tuple[List[float], List[float]]] = {}
    for seed_rows, seed_qat in results:
        for name, size, acc in seed_rows:
            rows.setdefault(name, []).append(acc)
            if size not in sizes.setdefault(name, []):
                sizes[name].append(size)  # an allocation's size may differ by seed
        for name, before, after in seed_qat:
            pair = qat.setdefault(name, ([], []))
            pair[0].append(before)
            pair[1].append(after)
    span = f"seeds {seeds[0]}..{seeds[-1]}, mean +- std"
    print(f"\n{MODELS[kind][1]}, test set of 449 images, {span}")
    print(f"{'model':<44} {'weight bytes':>12} {'accuracy %':>16}")
    for name, accs in rows.items():
        size = "/".join(sorted(sizes[name]))
        print(f"{name:<44} {size:>12} {_mean_std(accs):>16}")
    print(f"\nQAT fine-tune ({args.qat_epochs} epochs, Adam lr {args.qat_lr:g}, ranges frozen)")
    print(f"{'model':<44} {'PTQ %':>16} {'QAT %':>16}")
    for name, (before, after) in qat.items():
        print(f"{name:<44} {_mean_std(before):>16} {_mean_std(after):>16}")
    print("\nMixed minus uniform at the same size, paired by seed (mean +- standard error)")
    print(f"{'model':<44} {'PTQ':>22} {'QAT':>22}")
    for name, (before, after) in qat.items():
        if name.startswith("mixed"):
            same = qat[f"uniform {name.split(' at ')[1].split('-')[0]}-bit"]
            print(f"{name:<44} {_paired(before, same[0]):>22} {_paired(after, same[1]):>22}")
    print("\nPaired by seed (mean +- standard error, wins/losses)")
    for first, second in _pairs(rows):
        label = f"{first.replace(' weights', '')} - {second.replace(' weights', '')}"
        print(f"{label:<92} {_paired(rows[first], rows[second]):>22}")
    print(f"\n{kind}: {time.perf_counter() - start:.1f} s")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        choices=(*MODELS, "all"),
        default="all",
        help="the MLP, the depthwise-separable CNN, or both (default)",
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="float training (default: MLP 40, CNN 20)"
    )
    parser.add_argument("--seed", type=int, default=0, help="the first seed")
    parser.add_argument("--seeds", type=int, default=10, help="seeds averaged")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--qat-epochs", type=int, default=5)
    parser.add_argument("--qat-lr", type=float, default=1e-3)
    parser.add_argument(
        "--judge-corrected",
        action="store_true",
        help="mixed precision judges each layer after bias correction (as it is calibrated)",
    )
    parser.add_argument(
        "--allocations",
        action="store_true",
        help="only compare every allocation of the MLP at the 3-bit size with uniform 3-bit",
    )
    parser.add_argument(
        "--adaround",
        action="store_true",
        help="add learned rounding (AdaRound) rows; with --allocations, calibrate with it",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    seeds = range(args.seed, args.seed + args.seeds)
    if args.allocations:
        if args.model == "cnn":
            parser.error("--allocations lists the MLP's allocations; use --model mlp")
        allocations(seeds, args)
        return
    kinds = list(MODELS) if args.model == "all" else [args.model]
    options = {k: v for k, v in vars(args).items() if k != "model"}
    for kind in kinds:
        report(kind, seeds, argparse.Namespace(**options))
    print(f"\ntotal {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
