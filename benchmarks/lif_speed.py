"""Forward+backward time and peak memory of a LIF layer: aquatic against its peers.

For each peer that is installed (snnTorch ``Leaky`` in a Python loop, sinabs ``LIF``,
Norse ``LIF``), aquatic's ``LIF`` is set up to compute the same neuron:

- snnTorch ``Leaky(beta, threshold=1, reset_mechanism="subtract")``: aquatic
  ``LIF(alpha_mem=beta, surrogate=ArcTan(), detach_reset=True)``. snnTorch applies the
  reset one step later and undecayed, so spikes agree up to each neuron's first spike
  and then drift (see ``aquatic.functional.neurons``); the work per step is the same.
- sinabs ``LIF(tau_mem, norm_input=False, spike_fn=SingleSpike)`` (its default
  ``MultiSpike`` emits any number of spikes per step): aquatic ``LIF(tau_mem,
  surrogate=SingleExponential(width=0.5, scale=2))``, identical spikes. sinabs'
  ``tau_mem`` is a parameter; it is frozen so that both compute input gradients only.
- Norse ``LIF`` (current-based, Euler step ``dt=1``, reset to 0): aquatic
  ``LIF(alpha_mem=1 - dt/tau_mem, alpha_syn=1 - dt/tau_syn, norm_input=True,
  reset="zero", surrogate=FastSigmoid(slope=100))`` fed ``x / alpha_syn`` (Norse adds the
  input to the current after its decay), identical spikes.
- SpikingJelly ``LIFNode(tau, decay_input=False, v_reset=None,
  surrogate_function=ATan(), step_mode="m")`` (multi-step, time-major ``(T, N, C)``
  input; its fused CPU path): :math:`h = v - v/\tau + x`, soft reset (subtract the
  threshold), ArcTan surrogate :math:`1 / (1 + (\pi u)^2)`. aquatic ``LIF(alpha_mem=1 -
  1/tau, surrogate=ArcTan())`` computes :math:`\alpha v + x`: the same neuron and
  surrogate, the decay rounded differently, so spikes agree up to rounding.
  (rockpool's ``LIFTorch`` is not listed: importing rockpool tries to install a
  package from the network.)

The scaling table (``--scale-batch``; ``--quick`` for a shorter one) times aquatic and
the fastest peer of the first table over sequence lengths ``T`` and neuron counts, next
to two floors measured or computed here for the same tensor of ``N x T x C`` float32
elements: the time of six passes over it (three ``clone()``: read the input, write the
spikes, write the state for backward; read the gradient and the state, write the input's
gradient), and the bytes that must be live at the peak (the membrane, or the surrogate's
slopes at it, that backward reads, and the gradient it writes: two tensors). Its last
columns time aquatic's ``LIF(checkpoint=K)`` with ``K`` the integer nearest
:math:`\sqrt{T}`: forward keeps the state every ``K`` steps and backward recomputes the
membranes segment by segment, so what must be live is the gradient (one tensor) and
about ``T/K + K`` steps of state; ``MB /grad`` is its peak over one tensor. ``faults``
counts the minor page faults of one run of aquatic's layer: where a run frees more than
glibc keeps (64 MiB), the next one faults its memory in again, which can take longer
than the computation. Combinations above ``--max-elements`` are skipped.

Time: the best (and the median) of ``--repeats`` runs of ``torch.autograd.grad(layer(x).sum(), x)``
after two warm-up runs. Peak memory: the largest total size of tensors allocated and not
yet freed during one such run, relative to its start (torch's own allocation events,
recorded by ``torch.profiler`` with ``profile_memory=True``; outputs and ``x.grad``
included, the input itself not).

With Numba the first table also times ``LIF(surrogate=ArcTan())`` with its compiled
backward and with the PyTorch backward (``neurons_jit_backward.ENABLED = False``), after
the same compiled forward loop, and prints their ratio; a second table times the
backward pass alone both ways over batch and width.

The default layer's ratio to the six-pass floor is also taken in ``--rounds`` interleaved
rounds (the best of three runs of each in turn; the median ratio, with the 10th to 90th
percentile), which the summary line gives: on a shared machine, best-of times taken
minutes apart see different loads.

Run: ``python benchmarks/lif_speed.py [--threads 1] [--repeats 7] [--rounds 20] [--quick]
[--clock cpu]``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import math
import statistics
import time
from typing import Callable, List, Optional, Tuple

import torch
from torch.profiler import ProfilerActivity, profile

import aquatic
import aquatic.functional.jit_jobs as jit_jobs
import aquatic.functional.neurons_jit as neurons_jit
import aquatic.functional.neurons_jit_backward as neurons_jit_backward
import heap
from aquatic.nn import LIF, ArcTan, FastSigmoid, SingleExponential

TAU_MEM, TAU_SYN = 10.0, 5.0
#: The clock of the timings: wall time, or with ``--clock cpu`` the CPU time of this
#: process (steadier on a machine shared with other work; with one thread it is the
#: time the computation took, without the time other processes held the core).
CLOCK = time.perf_counter


def peak_memory_mb(step: Callable[[], None]) -> float:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak / 2**20


def page_faults(step: Callable[[], None], runs: int = 2) -> float:
    """Minor page faults per run of ``step`` (the kernel zero-filling fresh pages); nan
    where the platform does not count them."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not a Unix
        return float("nan")
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(runs):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / runs


def time_ms(step: Callable[[], None], repeats: int) -> Tuple[float, float]:
    for _ in range(2):
        step()
    times = []
    for _ in range(repeats):
        start = CLOCK()
        step()
        times.append((CLOCK() - start) * 1e3)
    return min(times), statistics.median(times)


class Case:
    """One layer under test: ``run(x)`` returns spikes ``(N, T, C)`` for ``x`` ``(N, T, C)``."""

    def __init__(self, run: Callable, prepare: Callable = lambda x: x):
        self.run, self.prepare = run, prepare

    def step(self, x: torch.Tensor) -> Callable[[], None]:
        data = self.prepare(x).detach().requires_grad_()

        def step():
            # autograd.grad, not backward: no gradient accumulates between runs
            torch.autograd.grad(self.run(data).sum(), data)

        return step

    def spikes(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.run(self.prepare(x))


def peer_cases() -> List[Tuple[str, Case, Case, str]]:
    """(peer, peer case, aquatic case, how their results compare) for each installed peer."""
    cases = []
    alpha = math.exp(-1 / TAU_MEM)
    if importlib.util.find_spec("snntorch"):
        import snntorch

        leaky = snntorch.Leaky(beta=alpha, threshold=1.0, reset_mechanism="subtract")

        def run_snntorch(x):
            mem = leaky.init_leaky()
            spikes = []
            for t in range(x.shape[1]):
                spk, mem = leaky(x[:, t], mem)
                spikes.append(spk)
            return torch.stack(spikes, 1)

        ours = LIF(alpha_mem=alpha, surrogate=ArcTan(), detach_reset=True)
        cases.append(
            (
                f"snntorch {snntorch.__version__} Leaky (loop)",
                Case(run_snntorch),
                Case(ours),
                "reset timing",
            )
        )
    if importlib.util.find_spec("sinabs"):
        import sinabs
        import sinabs.layers

        from sinabs.activation import SingleSpike

        sinabs_lif = sinabs.layers.LIF(tau_mem=TAU_MEM, norm_input=False, spike_fn=SingleSpike)
        sinabs_lif.tau_mem.requires_grad_(False)

        def run_sinabs(x):  # sinabs layers keep their state (and its graph) between calls
            sinabs_lif.zero_grad()  # detaches the state
            sinabs_lif.reset_states()
            return sinabs_lif(x)

        ours = LIF(tau_mem=TAU_MEM, surrogate=SingleExponential(width=0.5, scale=2.0))
        cases.append((f"sinabs {sinabs.__version__} LIF", Case(run_sinabs), Case(ours), "equal"))
    if importlib.util.find_spec("norse"):
        import norse
        import norse.torch

        params = norse.torch.LIFParameters(
            tau_mem_inv=torch.tensor(1 / TAU_MEM),
            tau_syn_inv=torch.tensor(1 / TAU_SYN),
            v_th=torch.tensor(1.0),
            v_leak=torch.tensor(0.0),
            v_reset=torch.tensor(0.0),
            method="super",
            alpha=torch.tensor(100.0),
        )
        theirs = norse.torch.LIF(params, dt=1.0)

        def run_norse(x):  # Norse is time-first: (T, N, C) in, (N, T, C) view out
            return theirs(x)[0].transpose(0, 1)

        alpha_syn = 1 - 1 / TAU_SYN
        ours = LIF(
            alpha_mem=1 - 1 / TAU_MEM,
            alpha_syn=alpha_syn,
            norm_input=True,
            reset="zero",
            surrogate=FastSigmoid(slope=100.0),
        )
        norse_case = Case(run_norse, lambda x: x.transpose(0, 1).contiguous())
        ours_case = Case(ours, lambda x: x / alpha_syn)
        version = getattr(norse, "__version__", "")
        cases.append((f"norse {version} LIF".replace("  ", " "), norse_case, ours_case, "equal"))
    if importlib.util.find_spec("spikingjelly"):
        from spikingjelly.activation_based import neuron as sj_neuron
        from spikingjelly.activation_based import surrogate as sj_surrogate

        sj_lif = sj_neuron.LIFNode(
            tau=TAU_MEM,
            decay_input=False,
            v_reset=None,
            surrogate_function=sj_surrogate.ATan(),
            step_mode="m",
        )

        def run_sj(x):  # time-major: (T, N, C) in, (N, T, C) view out
            sj_lif.reset()
            return sj_lif(x).transpose(0, 1)

        ours = LIF(alpha_mem=1 - 1 / TAU_MEM, surrogate=ArcTan())
        sj_case = Case(run_sj, lambda x: x.transpose(0, 1).contiguous())
        version = importlib.metadata.version("spikingjelly")
        cases.append((f"spikingjelly {version} LIFNode (m)", sj_case, Case(ours), "rounding"))
    return cases


def agreement(peer: Case, ours: Case, x: torch.Tensor, kind: str) -> str:
    theirs = peer.spikes(x)
    mine = ours.spikes(x)
    equal = (theirs == mine).float().mean().item()
    if kind == "equal":
        return f"{equal:.4%} of spikes equal"
    if kind == "rounding":
        return f"{equal:.4%} of spikes equal (decay rounded differently)"
    # Up to (and including) each neuron's first spike the conventions coincide.
    until_first = (torch.cumsum(theirs, 1) - theirs) == 0
    before = (theirs == mine)[until_first].float().mean().item()
    return f"{before:.4%} equal up to first spike, {equal:.1%} overall (reset timing)"


def six_passes(x: torch.Tensor) -> Callable[[], None]:
    """Six passes over a tensor like ``x``: three ``clone()`` (a read and a write each,
    including the allocation, as a layer allocates its outputs)."""

    def run():
        for _ in range(3):
            x.clone()

    return run


def floor_ms(x: torch.Tensor, repeats: int) -> float:
    """Time of :func:`six_passes` over ``x``."""
    return time_ms(six_passes(x), repeats)[0]


def floor_ratio(x: torch.Tensor, step: Callable[[], None], rounds: int) -> Tuple[float, ...]:
    """``(median, p10, p90)`` over ``rounds`` rounds of the ratio of ``step``'s time to
    the six-pass floor's (as :func:`floor_ms`), each round timing the two in turn (the
    best of 3 runs each, after one that is not counted: it meets the heap and caches as
    the other one left them). A change of the machine's load between the two
    measurements, which best-of times taken apart do not share, moves both alike."""
    floor = six_passes(x)

    def best(run: Callable[[], None]) -> float:
        run()
        times = []
        for _ in range(3):
            start = CLOCK()
            run()
            times.append(CLOCK() - start)
        return min(times)

    ratios = sorted(best(step) / best(floor) for _ in range(rounds))
    return (
        statistics.median(ratios),
        ratios[int(0.1 * (rounds - 1))],
        ratios[int(round(0.9 * (rounds - 1)))],
    )


def tensor_mb(x: torch.Tensor) -> float:
    return x.numel() * x.element_size() / 2**20


def backward_table(repeats: int) -> None:
    """The backward pass alone of ``LIF(surrogate=ArcTan())`` (also with a synaptic
    current, and with the default surrogate), compiled and PyTorch's (after the
    compiled forward, which keeps the surrogate's slopes for the compiled backward where
    it can, else the membranes), over batch and width at ``T = 100``: interleaved runs,
    the best of each."""
    print(
        "\nbackward alone, LIF(surrogate=ArcTan()), T=100 (synaptic: with alpha_syn; "
        "default: SingleExponential): compiled / PyTorch backward "
        f"(best of {repeats} interleaved runs)"
    )
    print(f"{'':9} {'batch':>6} {'C':>5} {'compiled ms':>12} {'PyTorch ms':>11} {'ratio':>6}")
    plain = LIF(alpha_mem=1 - 1 / TAU_MEM, surrogate=ArcTan())
    synaptic = LIF(alpha_mem=1 - 1 / TAU_MEM, alpha_syn=1 - 1 / TAU_SYN, surrogate=ArcTan())
    sizes = [("", plain, 16, 128), ("", plain, 64, 128), ("", plain, 16, 512)]
    sizes += [
        ("", plain, 64, 512),
        ("synaptic", synaptic, 16, 128),
        ("synaptic", synaptic, 64, 256),
    ]
    # the default surrogate, SingleExponential: its slopes kept by the forward loop
    default = LIF(alpha_mem=1 - 1 / TAU_MEM)
    sizes += [("default", default, 8, 128), ("default", default, 16, 128)]
    sizes += [("default", default, 64, 512)]
    for kind, layer, batch, width in sizes:
        x = (torch.rand(batch, 100, width) * 0.6).requires_grad_()
        best = {True: math.inf, False: math.inf}
        try:
            for _ in range(repeats + 2):
                for compiled in (True, False):
                    neurons_jit_backward.ENABLED = compiled
                    loss = layer(x).sum()
                    start = CLOCK()
                    torch.autograd.grad(loss, x)
                    best[compiled] = min(best[compiled], (CLOCK() - start) * 1e3)
        finally:
            neurons_jit_backward.ENABLED = True
        ratio = best[True] / best[False]
        print(f"{kind:9} {batch:6d} {width:5d} {best[True]:12.2f} {best[False]:11.2f} {ratio:6.2f}")


def scaling_table(args, peer: Optional[Tuple[str, Case, Case]]) -> None:
    """aquatic and the fastest peer over T and neurons, against the floors."""
    steps = (10, 100, 1000) if args.quick else (10, 100, 1000, 10000)
    neurons = (128, 512) if args.quick else (128, 512, 2048)
    repeats = 2 if args.quick else max(2, args.repeats // 2)
    name = peer[0] if peer else "no peer"
    print(
        f"\nscaling: batch {args.scale_batch}, best of {repeats}; peer: {name}; floor: "
        f"six passes (ms) and two live tensors (MB, the state backward reads and the "
        f"gradient)"
    )
    header = (
        f"{'T':>6} {'C':>5} {'aquatic ms':>10} {'MB':>8} {'peer ms':>9} {'MB':>8} "
        f"{'floor ms':>8} {'MB':>8} {'vs peer':>8} {'vs floor':>8} {'MB/floor':>8} "
        f"{'K':>4} {'ckpt ms':>8} {'MB':>8} {'MB/grad':>8} {'faults':>7}"
    )
    print(header + "\n" + "-" * len(header))
    for t in steps:
        for c in neurons:
            x = torch.rand(args.scale_batch, t, c) * 0.6
            if x.numel() > args.max_elements:
                print(f"{t:>6} {c:>5}  skipped: {x.numel()} elements > --max-elements")
                continue
            ours = Case(LIF(alpha_mem=1 - 1 / TAU_MEM, surrogate=ArcTan()))
            our_ms = time_ms(ours.step(x), repeats)[0]
            our_mb = peak_memory_mb(ours.step(x))
            faults = page_faults(ours.step(x))
            peer_ms = peer_mb = float("nan")
            if peer is not None:
                peer_ms = time_ms(peer[1].step(x), repeats)[0]
                peer_mb = peak_memory_mb(peer[1].step(x))
            floor, floor_mb = floor_ms(x, repeats), 2 * tensor_mb(x)
            k = max(1, round(math.sqrt(t)))
            low = Case(LIF(alpha_mem=1 - 1 / TAU_MEM, surrogate=ArcTan(), checkpoint=k))
            low_ms = time_ms(low.step(x), repeats)[0]
            low_mb = peak_memory_mb(low.step(x))
            print(
                f"{t:>6} {c:>5} {our_ms:10.1f} {our_mb:8.1f} {peer_ms:9.1f} {peer_mb:8.1f} "
                f"{floor:8.1f} {floor_mb:8.1f} {peer_ms / our_ms:7.1f}x "
                f"{our_ms / floor:7.1f}x {our_mb / floor_mb:7.2f}x "
                f"{k:>4} {low_ms:8.1f} {low_mb:8.1f} {low_mb / tensor_mb(x):7.2f}x {faults:7.0f}"
            )
    print(
        "faults: minor page faults per run of aquatic's layer. Thousands mean that the C "
        "library handed the run's memory back to the system and the next run faulted it in "
        "again (glibc keeps at most 64 MiB free; benchmarks/heap.py and docs/spiking.rst "
        "give the MALLOC_* settings that keep more)"
    )


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--neurons", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--rounds", type=int, default=20, help="interleaved rounds of the floor ratio"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--scale-batch", type=int, default=16, help="batch of the scaling table")
    parser.add_argument(
        "--max-elements", type=int, default=1 << 26, help="largest tensor of the scaling table"
    )
    parser.add_argument("--quick", action="store_true", help="a shorter scaling table")
    parser.add_argument("--no-scaling", action="store_true", help="only the first table")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(args.batch, args.steps, args.neurons) * 0.6

    # A first profiled run, so that the profiler's one-time notices come before the table.
    warm_up = Case(LIF(tau_mem=TAU_MEM)).step(x[:2, :2])
    warm_up()
    peak_memory_mb(warm_up)
    print(
        f"LIF forward+backward on input {tuple(x.shape)} (batch, time, neurons), float32, "
        f"torch {torch.__version__}, aquatic {aquatic.__version__}, "
        f"{torch.get_num_threads()} thread(s); best (median) of {args.repeats} runs, "
        f"{args.clock} time; compiled loops "
        f"{'on' if neurons_jit.available() else 'off (AQUATIC_NUMBA=0 or no Numba)'} "
        f"({jit_jobs.describe()}); {heap.describe()}"
    )
    header = f"{'layer':<42} {'ms best':>8} {'(median)':>9} {'peak MB':>8}  result"
    print(header + "\n" + "-" * len(header))

    def measure(name: str, case: Case, result: str = "") -> Tuple[float, float]:
        best, median = time_ms(case.step(x), args.repeats)
        memory = peak_memory_mb(case.step(x))
        print(f"{name:<42} {best:8.1f} {median:9.1f} {memory:8.1f}  {result}".rstrip())
        return best, memory

    ours_default = measure("aquatic LIF, fused (default)", Case(LIF(tau_mem=TAU_MEM)))
    k = max(1, round(math.sqrt(args.steps)))
    measure(f"aquatic LIF, fused, checkpoint={k}", Case(LIF(tau_mem=TAU_MEM, checkpoint=k)))
    measure("aquatic LIF, loop (reference)", Case(LIF(tau_mem=TAU_MEM, method="loop")))
    if neurons_jit.available():
        # The compiled backward against the PyTorch backward (ArcTan), both after the
        # compiled forward loop.
        arctan = LIF(tau_mem=TAU_MEM, surrogate=ArcTan())
        compiled = measure("aquatic LIF, ArcTan", Case(arctan))[0]
        neurons_jit_backward.ENABLED = False
        try:
            eager = measure("  the same, PyTorch backward", Case(arctan))[0]
        finally:
            neurons_jit_backward.ENABLED = True
        print(f"{'':<42} compiled backward: {eager / compiled:.2f}x as fast")
    peers = []
    for peer, theirs, ours, kind in peer_cases():
        peer_time, peer_memory = measure(peer, theirs, agreement(theirs, ours, x, kind))
        our_time, our_memory = measure("  aquatic LIF set up the same way", ours)
        ratios = f"speed-up {peer_time / our_time:.1f}x, memory {our_memory / peer_memory:.2f}x"
        print(f"{'':<42} {ratios}")
        peers.append((peer, peer_time, peer_memory, theirs, ours))
    floor = floor_ms(x, args.repeats)
    print(
        f"{'floor: six passes over the input':<42} {floor:8.1f} {'':>9} "
        f"{2 * tensor_mb(x):8.1f}  traffic {6 * tensor_mb(x):.1f} MB; live: state + gradient"
    )
    ratio, low, high = floor_ratio(x, Case(LIF(tau_mem=TAU_MEM)).step(x), args.rounds)
    print(
        f"{'aquatic LIF (default) / floor':<42} {ratio:7.2f}x {'':>9} {'':>8}  "
        f"median of {args.rounds} interleaved rounds (p10-p90 {low:.2f}-{high:.2f}x)"
    )
    fastest = None
    if peers:
        name, best, memory, theirs, ours = min(peers, key=lambda row: row[1])
        fastest = (name, theirs, ours)
        print(
            f"\nfastest peer: {name}, {best:.1f} ms, {memory:.1f} MB; aquatic LIF (default): "
            f"{ours_default[0]:.1f} ms, {ours_default[1]:.1f} MB, {best / ours_default[0]:.1f}x "
            f"faster, {ours_default[1] / memory:.2f}x the memory; "
            f"{ratio:.2f}x the six-pass floor (interleaved rounds)"
        )
    else:
        print("\nno peer installed (pip install snntorch sinabs norse spikingjelly)")
    if neurons_jit.available():
        backward_table(args.repeats)
    if not args.no_scaling:
        scaling_table(args, fastest)


if __name__ == "__main__":
    main()
