"""Device presets and the parsers of --gpu / --ram / --ram-bw."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from importlib import resources
from pathlib import Path

import pytest

from moeplace.errors import MoeplaceError
from moeplace.hardware import (
    GB,
    GIB,
    Device,
    catalog,
    device_set,
    for_engine,
    host_device,
    link_bandwidth,
    parse_gpus,
    preset_files,
    ram_bandwidth,
    runtime_overhead,
    speed_params,
)
from moeplace.testing import SPECS
from moeplace.testing.tensors import tensor_plan

PRESETS = preset_files()  # the one copy: moeplace/data/hardware-*.json, package data


def test_the_preset_files_ship_with_the_package() -> None:
    assert set(PRESETS) == {"apple.json", "gpus.json", "links.json", "memory.json"}
    assert not (Path(__file__).resolve().parent.parent / "profiles" / "hardware").exists(), \
        "profiles/ is for users' routing profiles; the presets live in moeplace/data only"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_device_preset_cites_a_source(name: str) -> None:
    data = json.loads(PRESETS[name])
    for key, spec in data.get("devices", {}).items():
        assert spec.get("source"), f"{name}: {key} has no source"
        assert spec["bandwidth_gbs"] > 0 and spec["memory_gib"] > 0 and spec["power_w"] > 0


def test_issue_presets_exist() -> None:
    cat = catalog()
    for name in ("rtx3060", "rtx3090", "rtx4060ti-16g", "rtx4090", "rtx5090", "a100", "h100", "rx7900xtx",
                 "rx7900xt", "rx9070xt", "arc-a770", "arc-b580", "m2-ultra-192g"):
        assert cat.preset(name) is not None, name


def test_preset_gpu() -> None:
    (d,) = parse_gpus(["rtx3090"])
    assert d.name == "CUDA0" and d.backend == "cuda"
    assert d.memory == 24 * GIB
    assert d.bandwidth == 936 * GB
    assert d.efficiency == catalog().efficiency["cuda"]
    assert d.effective_bandwidth == d.bandwidth * d.efficiency
    # PCIe 4.0 x16: 16 lanes x 1.969 GB/s x the link efficiency of the preset file.
    assert d.link_bandwidth == pytest.approx(16 * 1.969 * GB * catalog().link_efficiency)


def test_preset_names_ignore_case_and_dashes_and_take_aliases() -> None:
    a = parse_gpus(["RTX-3090"])[0]
    b = parse_gpus(["3090"])[0]
    assert a == b == parse_gpus(["rtx3090"])[0]


def test_size_at_bandwidth() -> None:
    (d,) = parse_gpus(["24G@936"])
    assert d.memory == 24 * 2**30 and d.bandwidth == 936e9 and not d.notes
    (e,) = parse_gpus(["24GB@1008GB/s"])
    assert e.memory == 24 * 10**9 and e.bandwidth == 1008e9


def test_bare_size_assumes_and_says_so() -> None:
    (d,) = parse_gpus(["12G"])
    assert d.memory == 12 * GIB
    assert d.bandwidth == catalog().generic["bandwidth_gbs"] * GB
    assert any("bandwidth not given" in n for n in d.notes)


def test_lists_are_numbered_per_backend() -> None:
    devs = parse_gpus(["24G,12G", "rtx3090", "vulkan:rx7900xtx"])
    assert [d.name for d in devs] == ["CUDA0", "CUDA1", "CUDA2", "Vulkan0"]
    assert [d.name for d in parse_gpus(["24G,12G"], backend="rocm")] == ["ROCm0", "ROCm1"]
    assert parse_gpus(["rx7900xtx"])[0].name == "ROCm0"  # AMD presets default to ROCm
    assert parse_gpus(["arc-a770"])[0].name == "SYCL0"
    assert parse_gpus(["m4max"])[0].name == "MTL0"


def test_rpc_devices_take_their_llama_cpp_name() -> None:
    devs = parse_gpus(["rtx3090", "rpc:10.0.0.2:50052=rtx4090"])
    assert [d.name for d in devs] == ["CUDA0", "RPC[10.0.0.2:50052]"]
    rpc = devs[1]
    assert rpc.backend == "rpc" and rpc.bandwidth == 1008 * GB
    # default RPC link: 10 GbE line rate x link efficiency
    assert rpc.link_bandwidth == pytest.approx(10e9 / 8 * catalog().link_efficiency)
    with pytest.raises(MoeplaceError, match="twice"):
        parse_gpus(["rpc:h:1=24G", "rpc:h:1=24G"])
    # --link: one value is the local cards' PCIe link (the RPC server keeps its network); a list sets each
    one = parse_gpus(["rtx3090", "rpc:10.0.0.2:50052=rtx4090"], links=["pcie4x4"])
    assert one[0].link_bandwidth == link_bandwidth("pcie4x4") and one[1].link_bandwidth == rpc.link_bandwidth
    each = parse_gpus(["rtx3090", "rpc:10.0.0.2:50052=rtx4090"], links=["pcie4x4,25gbe"])
    assert each[1].link_bandwidth == link_bandwidth("25gbe") == pytest.approx(25e9 / 8 * catalog().link_efficiency)


@pytest.mark.parametrize("bad", ["rtx9999", "24", "fast", "vulkan:nonsense"])
def test_bad_gpu_specs_are_user_errors(bad: str) -> None:
    with pytest.raises(MoeplaceError):
        parse_gpus([bad])


def test_unknown_backend() -> None:
    with pytest.raises(MoeplaceError, match="backend"):
        parse_gpus(["24G"], backend="opencl")


def test_ram_bandwidth_forms() -> None:
    assert ram_bandwidth("80") == 80 * GB
    assert ram_bandwidth(80.0) == 80 * GB
    # channels x MT/s x 8 bytes per transfer
    assert ram_bandwidth("ddr5-6000x2") == 2 * 6000e6 * 8
    assert ram_bandwidth("DDR4-3200") == 3200e6 * 8
    assert ram_bandwidth("epyc-9004") == 12 * 4800e6 * 8
    for bad in ("ddr5", "-3", "fast"):
        with pytest.raises(MoeplaceError):
            ram_bandwidth(bad)


def test_link_bandwidth() -> None:
    eff = catalog().link_efficiency
    assert link_bandwidth("3.0x16") == pytest.approx(16 * 0.985 * GB * eff)
    assert link_bandwidth("5.0x8") == pytest.approx(8 * 3.938 * GB * eff)
    assert link_bandwidth("25gbe") == pytest.approx(25e9 / 8 * eff)
    with pytest.raises(MoeplaceError):
        link_bandwidth("pcie9")


def test_host_defaults_to_this_machine() -> None:
    h = host_device()
    assert h.name == "CPU" and h.is_host
    assert h.memory == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert h.bandwidth == ram_bandwidth(catalog().default_ram_bw)
    assert any("RAM bandwidth not given" in n for n in h.notes)
    g = host_device(64 * GIB, "ddr5-6000x2", threads=8, available=60 * GIB)
    assert g.memory == 64 * GIB and g.bandwidth == 96e9 and not g.notes
    assert g.available == 60 * GIB and g.threads == 8
    g = host_device(64 * GIB, "ddr5-6000x2")  # threads and available RAM assumed, and said so
    assert any("-t" in n for n in g.notes) and any("--ram-avail" in n for n in g.notes)


def test_apple_memory_is_one_pool() -> None:
    (gpu,) = parse_gpus(["m2-ultra-192g"])
    assert gpu.unified and gpu.pool == 192 * GIB
    assert gpu.memory == round(192 * GIB * 0.75)  # recommendedMaxWorkingSetSize, gpu_fraction in apple.json
    host = host_device(gpus=[gpu])
    assert host.unified and host.memory == 192 * GIB and host.bandwidth == gpu.bandwidth


def test_an_integrated_gpu_marked_unified_shares_the_ram() -> None:
    # Strix Halo on Vulkan: not Metal, but one LPDDR5X pool, no PCIe link, and the host reads the same RAM.
    (gpu,) = parse_gpus(["8060s"])
    assert gpu.backend == "vulkan" and gpu.name == "Vulkan0"
    assert gpu.unified and gpu.pool == 128 * GIB and gpu.memory == round(128 * GIB * 0.75)
    assert gpu.link_bandwidth == 0
    host = host_device(gpus=[gpu])
    assert host.unified and host.memory == 128 * GIB and host.bandwidth == gpu.bandwidth == 256 * GB
    (card,) = parse_gpus(["w7800"])  # a discrete card stays behind its link
    assert not card.unified and card.link_bandwidth > 0


def test_device_set_and_overhead() -> None:
    gpus = parse_gpus(["rtx3090", "m4max"])
    devs = device_set(gpus, host_device(32 * GIB, 50))
    assert list(devs) == ["CUDA0", "MTL0", "CPU"]
    assert runtime_overhead(devs["CUDA0"]) == catalog().overhead["cuda"]
    assert runtime_overhead(devs["CPU"]) == 0


def test_calibration_replaces_efficiency() -> None:
    d = parse_gpus(["rtx4090"])[0].with_efficiency(0.82)
    assert isinstance(d, Device) and d.effective_bandwidth == pytest.approx(1008e9 * 0.82)
    with pytest.raises(MoeplaceError):
        d.with_efficiency(0)


def test_a_chiplet_hosts_peak_is_what_its_ccds_links_read() -> None:
    """An EPYC 9115 (2 CCDs) on 12 channels of DDR5-6000 reads at most 2 x ccd_gbs, not 576 GB/s; enough CCDs
    leave the channels' peak; a calibrated host's measurement already holds the limit."""
    p = speed_params()
    kw = {"threads": 16, "cores": 16}
    free = host_device(256 * GIB, "ddr5-6000x12", [], **kw)
    two = host_device(256 * GIB, "ddr5-6000x12", [], ccds=2, **kw)
    many = host_device(256 * GIB, "ddr5-6000x12", [], ccds=16, **kw)
    assert 2 * p.ccd_gbs * GB < 576 * GB < 16 * p.ccd_gbs * GB
    assert two.effective_bandwidth == pytest.approx(free.effective_bandwidth * 2 * p.ccd_gbs / 576)
    assert many.effective_bandwidth == free.effective_bandwidth
    assert any("2 CCDs" in n and "--ccds" in n for n in two.notes)
    assert not any("CCD" in n for n in many.notes + free.notes)
    assert two.with_efficiency(0.5).effective_bandwidth == pytest.approx(576 * GB * 0.5)
    assert f"576 GB/s peak, {2 * p.ccd_gbs:.0f} through 2 CCDs x" in two.describe()
    assert "CCD" not in many.describe()


@pytest.mark.parametrize(("spec", "message"), [
    ("24G@1.2.3", "unknown GPU"),
    ("24G@0", "not a real bandwidth"),
    ("24G@" + "9" * 400, "not a real bandwidth"),
    ("24G@200000", "not a real bandwidth"),
    ("0G@500", "has no memory"),
    ("9" * 400 + "G", "larger than any machine"),
])
def test_gpu_figures_are_checked(spec: str, message: str) -> None:
    with pytest.raises(MoeplaceError, match=message):
        parse_gpus([spec])


@pytest.mark.parametrize(("text", "message"), [
    ("nan", "not a real bandwidth"), ("inf", "not a real bandwidth"), ("1e999", "not a real bandwidth"),
    ("0", "not a real bandwidth"), ("-80", "not a real bandwidth"), ("ddr9-6000x2", "unknown RAM bandwidth"),
    ("ddr5-0", "not a real memory system"), ("ddr5-6000x0", "not a real memory system"),
    ("ddr5-6000x999", "not a real memory system"), ("ddr5-99999", "not a real memory system"),
])
def test_ram_figures_are_checked(text: str, message: str) -> None:
    with pytest.raises(MoeplaceError, match=message):
        ram_bandwidth(text)


def test_real_ram_figures_pass() -> None:
    assert ram_bandwidth("ddr5-6000x2") == 6000e6 * 8 * 2
    assert ram_bandwidth("lpddr5x-8533x8") == 8533e6 * 8 * 8
    assert ram_bandwidth("80") == 80 * GB


# --- per-type CPU costs (speed-model.json, measured by benchmarks/quant_cost.py) ------------------------------------

# The ggml types of the matrices of published rows (benchmarks/accuracy.py maps every quant label to one of these)
# and of the factory's models: each needs a measured cost, or it would silently cost what Q4_K costs.
COSTED_TYPES = ("MXFP4", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_XS", "IQ4_NL",
                "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "BF16", "F16")


def test_cpu_cost_tables_cost_every_type_in_use() -> None:
    p = speed_params()
    factory = {t.ggml_type.name for name in SPECS for t in tensor_plan(name) if len(t.ne) >= 2} - {"F32"}
    for table in (p.cpu_quant_cost, p.cpu_prefill_cost):
        assert set(COSTED_TYPES) | factory <= set(table)
        assert table["Q4_K"] == 1.0 and all(v > 0 for v in table.values())


I_QUANTS = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S")


def test_ik_llama_cpp_costs_types_by_its_own_kernels() -> None:
    """ik_llama.cpp's CPU kernels (iqk) cost types otherwise than llama.cpp's, both timed on one machine
    (quant_cost.py --bench): its K-quant decode is cheaper against its Q4_K than llama.cpp's is, its MXFP4 dearer."""
    p = speed_params()
    for factor in (p.engine_cpu_quant_factor["ik_llama.cpp"], p.engine_cpu_prefill_factor["ik_llama.cpp"]):
        assert set(COSTED_TYPES) <= set(factor)
        assert factor["Q4_K"] == 1.0 and all(0.1 < v < 10 for v in factor.values())
    ik = p.engine_cpu_quant_factor["ik_llama.cpp"]
    for t in ("Q3_K", "Q5_K"):
        assert ik[t] < 0.85, t
    assert ik["MXFP4"] > 1.5


def test_iq_types_cost_more_than_q4_k_on_the_cpu() -> None:
    """The i-quants dequantise through grid lookups: slower per element than Q4_K in decode, and in prompts on
    builds without the tiled kernels (published: IQ3_XXS pp512 34 tok/s against Q4_K_S 108 on a Ryzen 9 7950X,
    ik_llama.cpp discussion 164); the tiled kernels bring their prompts to about Q4_K's."""
    p = speed_params()
    older = json.loads(resources.files("moeplace").joinpath("data", "speed-model.json").read_text())
    for t in I_QUANTS:
        assert p.cpu_quant_cost[t] > 1.3, t
        assert older["cpu_prefill_cost_vec_dot"][t] > 1.3 and older["cpu_prefill_cost_untiled"][t] > 1.3, t
        assert 0.7 < p.cpu_prefill_cost[t] < 1.5, t


def test_prompts_and_decode_order_types_differently() -> None:
    """Why there are two tables: llamafile's sgemm makes Q8_0 prompts cheaper per element than its decode, relative
    to Q4_K; without repacking (older builds) Q8_0 and F16 prompts (sgemm) beat Q4_K's (vec_dot) outright."""
    p = speed_params()
    older = json.loads(resources.files("moeplace").joinpath("data", "speed-model.json").read_text())
    assert p.cpu_prefill_cost["Q8_0"] < p.cpu_quant_cost["Q8_0"] - 0.3
    assert older["cpu_prefill_cost_vec_dot"]["Q8_0"] < 1 and older["cpu_prefill_cost_vec_dot"]["F16"] < 1


def test_the_host_device_takes_both_cost_tables() -> None:
    p = speed_params()
    host = host_device(64 * GIB, 100, threads=8, cores=8)
    assert dict(host.quant_cost) == dict(p.cpu_quant_cost)
    assert dict(host.prefill_cost) == dict(p.cpu_prefill_cost)


def test_another_engine_runs_the_host_at_its_fitted_rate() -> None:
    """ik_llama.cpp's CPU kernels: the host's compute rates times engine_cpu_factor; its GPUs as they are but for
    its op-offload rule for routed experts (ENGINE_MOE_OFFLOAD_ROWS) and its GQA-aware decode attention."""
    from moeplace.hardware import ENGINE_MOE_OFFLOAD_ROWS

    p = replace(speed_params(), engine_cpu_factor={"ik_llama.cpp": 2.0})
    devs = device_set(parse_gpus(["rtx3090"]), host_device(64 * GIB, 100, threads=8, cores=8))
    ik = for_engine(devs, "ik_llama.cpp", p)
    assert ik["CPU"].decode_rate == 2 * devs["CPU"].decode_rate and ik["CPU"].flops == 2 * devs["CPU"].flops
    assert devs["CUDA0"].moe_offload_rows == 0
    assert ik["CUDA0"].moe_offload_rows == ENGINE_MOE_OFFLOAD_ROWS["ik_llama.cpp"]
    assert replace(ik["CUDA0"], moe_offload_rows=0.0, kv_reread_share=devs["CUDA0"].kv_reread_share) == devs["CUDA0"]
    assert for_engine(devs, "llama.cpp", p) == devs
    # its CUDA decode attention reads each KV head once (its PR 370); llama.cpp-based engines keep the rereads
    share = replace(p, gpu_kv_reread_share=0.6)
    gpus = device_set(parse_gpus(["rtx3090"], params=share), host_device(64 * GIB, 100, threads=8, cores=8))
    assert gpus["CUDA0"].kv_reread_share == 0.6 and gpus["CUDA0"].cuda_cc == 8.6
    assert for_engine(gpus, "ik_llama.cpp", share)["CUDA0"].kv_reread_share == 0.0
    assert for_engine(gpus, "lmstudio", share)["CUDA0"].kv_reread_share == 0.6
    # its kernels have no AVX-512 path without VNNI: such a CPU prompts at the AVX2 rate under it, not under llama.cpp
    skx = device_set((), host_device(64 * GIB, 100, threads=8, cores=8, simd="avx512"))
    avx2 = host_device(64 * GIB, 100, threads=8, cores=8, simd="avx2")
    assert for_engine(skx, "ik_llama.cpp", p)["CPU"].flops == pytest.approx(2 * avx2.flops)
    assert for_engine(skx, "ik_llama.cpp", p)["CPU"].simd == "avx2" and for_engine(skx, "llama.cpp", p) == skx


def test_another_engine_costs_the_hosts_types_by_its_own_tables() -> None:
    """for_engine multiplies the host's per-type tables by the engine's measured factors (types it lists; the rest
    as llama.cpp's); engines without factors, and llama.cpp, keep llama.cpp's tables; GPUs take none."""
    p = replace(speed_params(), engine_cpu_quant_factor={"ik_llama.cpp": {"Q4_K": 1.0, "Q8_0": 0.5}},
                engine_cpu_prefill_factor={"ik_llama.cpp": {"Q4_K": 1.0, "Q8_0": 3.0}})
    devs = device_set(parse_gpus(["rtx3090"]), host_device(64 * GIB, 100, threads=8, cores=8, params=p))
    ik = for_engine(devs, "ik_llama.cpp", p)
    decode, prompt = dict(ik["CPU"].quant_cost), dict(ik["CPU"].prefill_cost)
    assert decode["Q8_0"] == pytest.approx(0.5 * p.cpu_quant_cost["Q8_0"])
    assert prompt["Q8_0"] == pytest.approx(3.0 * p.cpu_prefill_cost["Q8_0"])
    assert decode["Q6_K"] == p.cpu_quant_cost["Q6_K"] and decode["Q4_K"] == 1.0
    assert ik["CUDA0"].quant_cost == devs["CUDA0"].quant_cost
    for other in ("llama.cpp", "lmstudio"):
        assert dict(for_engine(devs, other, p)["CPU"].quant_cost) == dict(p.cpu_quant_cost)
    only_decode = replace(p, engine_cpu_prefill_factor={})
    assert dict(for_engine(devs, "ik_llama.cpp", only_decode)["CPU"].prefill_cost) == dict(p.cpu_prefill_cost)


def test_cpu_vector_class_sets_the_host_prompt_rate() -> None:
    params = speed_params()
    ref = host_device(64 * GIB, "ddr5-6000x2", threads=16, cores=16)
    for simd, factor in params.cpu_simd_factor.items():
        host = host_device(64 * GIB, "ddr5-6000x2", threads=16, cores=16, simd=simd)
        assert host.flops == pytest.approx(ref.flops * factor)
        assert host.decode_rate == ref.decode_rate  # decode is not scaled by the class
    assert params.cpu_simd_factor["avx512-vnni"] == 1.0  # the reference class core_gflops is fitted in
    with pytest.raises(MoeplaceError, match=r"unknown CPU vector class 'sse2'.*avx2"):
        host_device(64 * GIB, "ddr5-6000x2", threads=16, cores=16, simd="sse2")


def test_multi_vendor_backends_take_the_vendors_efficiencies() -> None:
    """Vulkan runs NVIDIA, AMD and Intel GPUs with different kernels and FP16 conventions: a vendor's fitted
    efficiencies apply where present, the backend's otherwise; single-vendor backends keep theirs."""
    from moeplace.hardware import gpu_key

    assert gpu_key("vulkan", "NVIDIA GeForce RTX 3090") == "vulkan:nvidia"
    assert gpu_key("vulkan", "AMD Radeon RX 7900 XTX") == "vulkan:amd"
    assert gpu_key("vulkan", "Mesa lavapipe") == "vulkan"
    assert gpu_key("cuda", "NVIDIA GeForce RTX 3090") == "cuda"
    base = speed_params()
    params = replace(base, efficiency={**base.efficiency, "vulkan": 0.5, "vulkan:amd": 0.3},
                     gpu_compute_efficiency={**base.gpu_compute_efficiency, "vulkan": 0.45, "vulkan:amd": 0.2})
    params = replace(params, efficiency={k: v for k, v in params.efficiency.items() if k != "vulkan:nvidia"},
                     gpu_compute_efficiency={k: v for k, v in params.gpu_compute_efficiency.items()
                                             if k != "vulkan:nvidia"})
    amd, nvidia = parse_gpus(["rx7900xtx", "rtx3090"], "vulkan", params=params)
    assert (amd.efficiency, amd.compute_efficiency) == (0.3, 0.2)
    assert (nvidia.efficiency, nvidia.compute_efficiency) == (0.5, 0.45)
