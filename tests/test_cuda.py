"""The same results on a CUDA device as on the CPU (skipped without one)."""

import copy

import pytest
import torch

import aquatic
from aquatic.quantizers import UniformQuantizer

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("ch_axis", [None, 0])
def test_uniform_quantizer_matches_cpu(ch_axis):
    x = torch.randn(16, 32) * 3
    cpu = UniformQuantizer(bits=6, ch_axis=ch_axis)
    gpu = copy.deepcopy(cpu).cuda()
    xc = x.clone().requires_grad_()
    xg = x.cuda().requires_grad_()
    yc, yg = cpu(xc), gpu(xg)
    assert yg.device.type == "cuda"
    assert torch.equal(yg.cpu(), yc)
    yc.sum().backward()
    yg.sum().backward()
    assert torch.equal(xg.grad.cpu(), xc.grad)
    assert torch.equal(gpu.to_int(x.cuda()).cpu(), cpu.to_int(x))


def test_int8_mlp_trains_on_cuda_like_on_cpu():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        aquatic.nn.Linear(20, 16, qconfig=aquatic.qconfig.int8),
        torch.nn.ReLU(),
        aquatic.nn.Linear(16, 4, qconfig=aquatic.qconfig.int8),
    )
    gpu_model = copy.deepcopy(model).cuda()
    x, target = torch.randn(32, 20), torch.randint(0, 4, (32,))
    for m, device in ((model, "cpu"), (gpu_model, "cuda")):
        optimizer = torch.optim.SGD(m.parameters(), lr=0.1)
        for _ in range(3):
            loss = torch.nn.functional.cross_entropy(m(x.to(device)), target.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    for name, buffer in gpu_model.named_buffers():
        assert buffer.device.type == "cuda", name
    # float sums may differ in the last bits between devices; a step apart at most
    scale = model[2].quantizers["activation"].qparams()["scale"].item()
    diff = (gpu_model(x.cuda()).cpu() - model(x)).abs().max().item()
    assert diff <= scale + 1e-6


def test_lif_fused_equals_loop_on_cuda():
    x = torch.rand(4, 30, 64, device="cuda") * 0.6
    lif = aquatic.nn.LIF(tau_mem=10.0, tau_syn=5.0).cuda()
    loop = aquatic.nn.LIF(tau_mem=10.0, tau_syn=5.0, method="loop").cuda()
    xa = x.clone().requires_grad_()
    xb = x.clone().requires_grad_()
    sa, sb = lif(xa), loop(xb)
    assert torch.equal(sa, sb) and sa.sum() > 0
    sa.sum().backward()
    sb.sum().backward()
    assert torch.allclose(xa.grad, xb.grad, atol=1e-5)
    assert lif.v_mem.device.type == "cuda"
    cpu_spikes = aquatic.nn.LIF(tau_mem=10.0, tau_syn=5.0)(x.cpu())
    assert torch.equal(cpu_spikes, sa.detach().cpu())


@pytest.mark.parametrize("preset", ["xylo", "loihi"])
def test_chip_presets_on_cuda_spike_as_the_fused_cpu_sequence(preset):
    # On the CPU the quantized states run the fused sequence (NumPy loop); on CUDA the
    # step-by-step loop. Both compute the reference loop's bits.
    from aquatic.hw import loihi, xylo

    torch.manual_seed(0)
    if preset == "xylo":
        q = xylo.qconfig()
        neuron = aquatic.nn.LIF(tau_mem=8.0, tau_syn=4.0, max_spikes=31, qconfig=q)
    else:
        q = loihi.qconfig()
        neuron = aquatic.nn.LIF(tau_mem=8.0, tau_syn=4.0, qconfig=q, **loihi.neuron_options())
    # The neurons alone: elementwise IEEE operations give the same bits on both devices
    # (a matmul before them need not).
    model = neuron
    gpu_model = copy.deepcopy(model).cuda()
    x = torch.rand(3, 20, 5, generator=torch.Generator().manual_seed(2)) * 4
    xc, xg = x.clone().requires_grad_(), x.cuda().requires_grad_()
    yc, yg = model(xc), gpu_model(xg)
    assert torch.equal(yg.cpu(), yc) and yc.sum() > 0
    yc.sum().backward()
    yg.sum().backward()
    assert torch.allclose(xg.grad.cpu(), xc.grad, atol=1e-5)
