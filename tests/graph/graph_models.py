"""Real architectures written the ordinary way, for the graph tests: a torchvision-style
ResNet (BasicBlock with downsample, BatchNorm, residual ``+=``) and MobileNetV2's
inverted residual block (depthwise convolution, ReLU6), and their training."""

import torch
import torch.nn.functional as F
from torch import nn

import aquatic
from aquatic.quantizers import UniformQuantizer

POW2 = aquatic.QConfig(
    weight=UniformQuantizer.with_args(bits=8, power_of_two=True),
    bias=UniformQuantizer.with_args(bits=16, scale=2.0**-10),
    activation=UniformQuantizer.with_args(bits=8, power_of_two=True),
)
INT8 = aquatic.qconfig.int8


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock, written out."""

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        identity = x
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return F.relu(out)


class ResNet(nn.Module):
    """ResNet-18 (layers=(2, 2, 2, 2)) and ResNet-8 (layers=(1, 1, 1)) as torchvision
    builds them, narrower, for 1-channel 16x16 inputs."""

    def __init__(self, layers, width=8, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        blocks, inplanes = [], width
        for index, count in enumerate(layers):
            planes = width * 2**index
            stage = []
            for block in range(count):
                stride = 2 if index > 0 and block == 0 else 1
                stage.append(BasicBlock(inplanes, planes, stride))
                inplanes = planes
            blocks.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(inplanes, classes)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layers(x)
        x = x.mean((2, 3))
        return self.fc(torch.flatten(x, 1))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: expand 1x1, depthwise 3x3, ReLU6, project 1x1, residual add."""

    def __init__(self, channels, expand=4):
        super().__init__()
        hidden = channels * expand
        self.expand = nn.Conv2d(channels, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.project = nn.Conv2d(hidden, channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = F.relu6(self.bn1(self.expand(x)))
        out = F.hardtanh(self.bn2(self.depthwise(out)), 0.0, 6.0)
        return x + self.bn3(self.project(out))


class MobileNetBlockNet(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, 2, 1)
        self.block = InvertedResidual(8)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        x = self.block(torch.clamp(self.stem(x), 0.0, 6.0))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _bn_pairs(model):
    """(layer, batch norm) names: convN/bnN, and downsample.0/downsample.1."""
    names = dict(model.named_modules())
    pairs = []
    for name, module in names.items():
        if not isinstance(module, nn.BatchNorm2d):
            continue
        parent, _, own = name.rpartition(".")
        prefix = parent + "." if parent else ""
        if own == "1" and parent.endswith("downsample"):
            pairs.append((prefix + "0", name))
        else:
            layer = {"bn1": ("conv1", "expand", "stem"), "bn2": ("conv2", "depthwise")}
            candidates = layer.get(own, ("project",))
            pairs.append((next(prefix + c for c in candidates if prefix + c in names), name))
    return pairs


def trained(model, qconfig, steps=3, seed=0, fuse=True):
    """Quantize (batch norms fused with the layer before them, found along the traced
    forward; or, with ``fuse=False``, folded first), train a few steps, freeze the
    batch-norm statistics for the last one, and return the model in eval mode."""
    torch.manual_seed(seed)
    x = torch.rand(16, 1, 16, 16)
    y = torch.randint(0, 10, (16,))
    model.train()
    for _ in range(2):  # batch statistics worth folding
        model(x)
    if not fuse:
        model = aquatic.fold_batch_norm(model.eval(), pairs=_bn_pairs(model))
    qmodel = aquatic.quantize(model, qconfig, quantize_output=True)
    if fuse and _bn_pairs(model):
        fused = [m for m in qmodel.modules() if isinstance(m, aquatic.nn.FusedBatchNorm)]
        assert len(fused) == len(_bn_pairs(model))  # every pair found in the graph
    optimizer = torch.optim.SGD(qmodel.parameters(), lr=0.02, momentum=0.9)
    qmodel.train()
    for step in range(steps):
        if step == steps - 1:
            aquatic.nn.freeze_bn(qmodel)
        optimizer.zero_grad()
        F.cross_entropy(qmodel(x), y).backward()
        optimizer.step()
    return qmodel.eval(), torch.rand(48, 1, 16, 16)


def check(qmodel, x, exact):
    integer = aquatic.convert(qmodel, example_input=x)
    assert isinstance(integer, aquatic.integer.IntegerGraph)
    codes = integer(integer.quantize_input(x))
    assert codes.dtype in (torch.int32, torch.int64)
    out = integer.dequantize_output(codes)
    with torch.no_grad():
        expected = qmodel(x)
    if exact:
        assert torch.equal(out, expected)
    else:
        step = integer.output_specs.scale.float()
        assert float((out - expected).abs().max()) <= 2 * float(step) + 1e-6
        agree = (out.argmax(1) == expected.argmax(1)).float().mean()
        assert agree >= 0.99


MODELS = {
    "resnet8": lambda: ResNet((1, 1, 1)),
    "resnet18": lambda: ResNet((2, 2, 2, 2), width=4),
    "mobilenet_block": MobileNetBlockNet,
}
