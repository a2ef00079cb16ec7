"""The one precision rule (pipeline.core.models.resolve_dtype) on injected /proc/cpuinfo texts:
`auto` is bf16 only on a CPU with bf16 arithmetic in hardware, the CPU default stays float32 until
bf16 is measured faster, and every stage's flag takes the same names."""
from __future__ import annotations

import pytest

from pipeline.core import models
from pipeline.core.hardware import cpu_flags, cpu_has_native_bf16
from pipeline.core.models import resolve_dtype, weights_dtype
from pipeline.core.settings import AUTOCAST_BF16, PRECISIONS, TRAIN_PRECISIONS

# abridged /proc/cpuinfo of three machines this project has run on or may run on
EPYC_ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu vme sse sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni
processor\t: 1
flags\t\t: fpu vme sse sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni
"""
AVX2_ONLY = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz
flags\t\t: fpu vme sse sse2 avx avx2 fma
"""
SAPPHIRE_RAPIDS = "processor : 0\nflags : avx512f amx_tile amx_bf16 amx_int8\n"
GRAVITON3 = "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd sve bf16 i8mm\nCPU implementer\t: 0x41\n"
GRAVITON2 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics\n"


@pytest.mark.parametrize("cpuinfo, native", [(EPYC_ZEN4, True), (SAPPHIRE_RAPIDS, True), (GRAVITON3, True),
                                             (AVX2_ONLY, False), (GRAVITON2, False), ("", False)])
def test_native_bf16_is_read_from_the_first_processors_flags(cpuinfo, native):
    assert cpu_has_native_bf16(cpuinfo) is native
    assert ("avx2" in cpu_flags(cpuinfo)) is ("avx2" in cpuinfo)


def test_auto_is_bf16_only_where_the_cpu_has_it_and_is_the_cpu_default(monkeypatch):
    assert resolve_dtype("auto", "cpu", cpuinfo=EPYC_ZEN4) == "bfloat16"
    assert resolve_dtype("auto", "cpu", cpuinfo=AVX2_ONLY) == "float32"  # emulated bf16 is several times slower
    # not told: auto, bf16 where native (it solved fp32's count at 0.6 of the CPU, docs/accuracy.md)
    monkeypatch.delenv(models.CPU_DTYPE_ENV, raising=False)
    assert models.CPU_DEFAULT_DTYPE == "auto"
    assert resolve_dtype(None, "cpu", cpuinfo=EPYC_ZEN4) == "bfloat16"
    assert resolve_dtype(None, "cpu", cpuinfo=AVX2_ONLY) == "float32"
    # one environment variable pins a precision for a process tree (the test suite pins float32)
    monkeypatch.setenv(models.CPU_DTYPE_ENV, "float32")
    assert resolve_dtype(None, "cpu", cpuinfo=EPYC_ZEN4) == "float32"
    monkeypatch.setenv(models.CPU_DTYPE_ENV, "auto")
    assert resolve_dtype(None, "cpu", cpuinfo=EPYC_ZEN4) == "bfloat16"
    assert resolve_dtype(None, "cpu", cpuinfo=AVX2_ONLY) == "float32"
    assert resolve_dtype("float32", "cpu", cpuinfo=EPYC_ZEN4) == "float32"  # a named precision still wins


def test_named_precisions_are_kept_and_autocast_loads_float32_weights():
    for name in ("float32", "bfloat16", "float16", AUTOCAST_BF16):
        assert resolve_dtype(name, "cpu", cpuinfo=AVX2_ONLY) == name  # asked for by name: no second guessing
    assert weights_dtype(AUTOCAST_BF16) == "float32"
    assert weights_dtype("bfloat16") == "bfloat16" and weights_dtype("float32") == "float32"
    with pytest.raises(ValueError, match="unknown precision 'bf16'.*auto, float32, bfloat16, float16, autocast"):
        resolve_dtype("bf16", "cpu")


def test_every_stage_flag_takes_the_precision_names():
    """ttft --torch_dtype takes the training modes too; sample and rescore --dtype the inference ones."""
    from pipeline.core.settings import RescoreSettings, SampleSettings, TTFTModelSettings

    def choices(cls, name):
        return next(f.metadata["choices"] for f in cls.__dataclass_fields__.values() if f.name == name)

    assert choices(TTFTModelSettings, "torch_dtype") == TRAIN_PRECISIONS
    assert choices(SampleSettings, "dtype") == choices(RescoreSettings, "dtype") == PRECISIONS
    assert "auto" in PRECISIONS and AUTOCAST_BF16 not in PRECISIONS
