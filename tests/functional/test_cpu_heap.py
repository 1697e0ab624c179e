"""cpu_heap.settle: once per process, before the first large CPU sequence, glibc's
thresholds raised so that a training step's blocks stay in the heap."""

import ctypes
import platform
import subprocess
import sys
import textwrap

import pytest
import torch

import aquatic
from aquatic.functional import cpu_heap


def test_small_or_non_cpu_inputs_do_not_settle(monkeypatch):
    monkeypatch.setattr(cpu_heap, "_settled", False)
    assert not cpu_heap.settle(torch.zeros(cpu_heap.MIN_BYTES // 4 - 1))
    assert not cpu_heap.settle(torch.empty(1 << 22, device="meta"))
    assert not cpu_heap._settled
    assert cpu_heap.settle(torch.zeros(cpu_heap.MIN_BYTES // 4))
    assert not cpu_heap.settle(torch.zeros(1 << 22))  # once per process
    assert cpu_heap._settled


def _glibc_with_mallinfo2() -> bool:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


def test_the_fused_sequences_settle_before_their_first_large_input(monkeypatch):
    monkeypatch.setattr(cpu_heap, "_settled", False)
    lif = aquatic.nn.LIF(tau_mem=10.0)
    lif(torch.rand(2, 10, 8))
    assert not cpu_heap._settled
    lif(torch.rand(16, 100, 256))  # 1.6 MB
    assert cpu_heap._settled
    monkeypatch.setattr(cpu_heap, "_settled", False)
    xylo = aquatic.nn.LIF(tau_mem=10.0, qconfig=aquatic.hw.xylo.qconfig())
    xylo(torch.rand(16, 100, 256))
    assert cpu_heap._settled


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc 2.33 or later")
def test_after_settling_blocks_come_from_the_heap():
    # In a fresh process: a block above glibc's threshold is mapped on its own, and
    # freeing it raises the threshold to its size (16 MiB here); a larger block (24 MiB)
    # is mapped again, unless the heap was settled in between (threshold near 32 MiB).
    script = textwrap.dedent("""
        import ctypes, torch
        from aquatic.functional import cpu_heap

        class MallInfo2(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks",
                        "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                        "fordblks", "keepcost")]

        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2

        def mapped_for(mib):
            base = libc.mallinfo2().hblkhd
            block = torch.empty(mib << 20, dtype=torch.uint8)
            return (libc.mallinfo2().hblkhd - base) >> 20

        control = mapped_for(16)
        settled = cpu_heap.settle(torch.zeros(1 << 18))
        print(control, settled, mapped_for(24))
        """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    control, settled, mapped = done.stdout.split()
    assert int(control) >= 16 and settled == "True"
    assert int(mapped) == 0
