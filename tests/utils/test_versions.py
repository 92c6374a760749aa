"""The machine record every report and benchmark carries: the CPU named with the ISA that decides
reduced-precision speed (AMX or not), read from /proc/cpuinfo."""

from __future__ import annotations

import pytest

from lfm_deploy.utils import versions
from lfm_deploy.utils.versions import describe_cpu, machine


def _cpuinfo(tmp_path, flags: str, name: str = "Test CPU 9000"):
    path = tmp_path / "cpuinfo"
    block = f"processor\t: 0\nmodel name\t: {name}\nflags\t\t: fpu sse2 {flags}\n\n"
    path.write_text(block * 2)
    return path


@pytest.mark.parametrize(("flags", "expected"), [
    ("avx2 avx512f avx512_vnni avx512_bf16", "Test CPU 9000 (AVX-512, AVX512-BF16, AVX512-VNNI, no AMX)"),
    ("avx512f avx512_bf16 avx512_vnni amx_bf16 amx_tile amx_int8",
     "Test CPU 9000 (AVX-512, AVX512-BF16, AVX512-VNNI, AMX)"),
    ("avx2", "Test CPU 9000 (no AMX)"),
])
def test_the_cpu_is_named_with_what_decides_reduced_precision_speed(tmp_path, monkeypatch, flags, expected):
    real_open = open
    fake = _cpuinfo(tmp_path, flags)
    monkeypatch.setattr(versions, "open", lambda p, *a, **k: real_open(fake if p == "/proc/cpuinfo" else p, *a, **k),
                        raising=False)
    monkeypatch.setattr(versions.platform, "machine", lambda: "x86_64")
    info = machine()
    assert info["cpu"] == "Test CPU 9000"
    assert describe_cpu(info) == expected


def test_older_records_and_other_architectures_name_the_cpu_alone():
    assert describe_cpu({"cpu": "AMD EPYC"}) == "AMD EPYC"  # recorded before the ISA was
    assert describe_cpu({"cpu": "Neoverse", "machine": "aarch64", "isa": []}) == "Neoverse"
    assert describe_cpu({}) == "unknown CPU"


def test_this_machine_is_described():
    info = machine()
    assert describe_cpu(info).startswith(info["cpu"] or "unknown CPU")
