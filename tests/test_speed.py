"""The decode/prefill model: its limits, monotonicity, routing profiles, energy."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from moeplace.hardware import Device, catalog, device_set, host_device, parse_gpus
from moeplace.memory import RunConfig, kv_bytes_per_layer
from moeplace.model import ModelDescription, Role, load_model, tensor_bytes_per_token
from moeplace.placement import all_on, layer_placement
from moeplace.routing import PROMPT_ROUTING_SHAPE, expected_distinct
from moeplace.sizes import GIB
from moeplace.speed import (
    SpeedError,
    TensorTable,
    decode_from_work,
    decode_time,
    distinct_by_block,
    energy,
    estimate,
    host_copy_bandwidth,
    kv_read_bytes_per_layer,
    kv_rereads,
    linear_seconds,
    normalise_probs,
    prefill_from_work,
    prefill_time,
    tensor_costs,
    workload,
)
from moeplace.testing import SPECS, write_model

MODELS = ("qwen3moe-tiny", "deepseek2-tiny", "gpt-oss-tiny", "qwen3-30b-a3b", "gpt-oss-20b")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelDescription]:
    d: Path = tmp_path_factory.mktemp("models")
    return {n: load_model(write_model(n, d / f"{n}.gguf")[0]) for n in MODELS}


def free_switch_devices(gpu_bw: float = 1e12, cpu_bw: float = 1e11) -> dict[str, Device]:
    """A GPU and a host with no cost for switching between them, so decode time is bytes / bandwidth only."""
    gpu = Device("CUDA0", "cuda", "test GPU", memory=1 << 45, bandwidth=gpu_bw, efficiency=0.5, power=300,
                 link_bandwidth=1e30, flops=1e14, idle_power=30)
    cpu = Device("CPU", "cpu", "test RAM", memory=1 << 45, bandwidth=cpu_bw, efficiency=0.5, power=100,
                 flops=1e12, idle_power=10)
    return {"CUDA0": gpu, "CPU": cpu}


def floor_bytes(model: ModelDescription, roles: set[Role] | None = None) -> float:
    """The inspector's law: bytes one token reads with uniform routing (model.tensor_bytes_per_token)."""
    return sum(tensor_bytes_per_token(t, model.hparams) for t in model.tensors
               if roles is None or t.role in roles)


# --- limits -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_everything_on_gpu(models: dict[str, ModelDescription], name: str) -> None:
    m = models[name]
    devs = free_switch_devices()
    d = decode_time(m, all_on(m, "CUDA0"), RunConfig(), devs, n_past=0)
    embd = floor_bytes(m, {Role.TOKEN_EMBD})
    gpu_eff, cpu_eff = devs["CUDA0"].effective_bandwidth, devs["CPU"].effective_bandwidth
    # The token embedding stays on the host (one row per token); everything else is read from the GPU.
    assert d.seconds == pytest.approx((floor_bytes(m) - embd) / gpu_eff + embd / cpu_eff, rel=1e-9)
    assert d.kv_seconds == {}


@pytest.mark.parametrize("name", MODELS)
def test_nothing_on_gpu(models: dict[str, ModelDescription], name: str) -> None:
    m = models[name]
    devs = free_switch_devices()
    d = decode_time(m, all_on(m, "CPU"), RunConfig(), devs, n_past=0)
    assert d.seconds == pytest.approx(floor_bytes(m) / devs["CPU"].effective_bandwidth, rel=1e-9)
    assert d.switches == 0


def test_kv_read_grows_with_context(models: dict[str, ModelDescription]) -> None:
    m = models["qwen3-30b-a3b"]
    s = SPECS["qwen3-30b-a3b"]
    devs = free_switch_devices()
    cfg = RunConfig(n_ctx=8192)
    d = decode_time(m, all_on(m, "CUDA0"), cfg, devs, n_past=1000)
    per_cell = s.n_layer * 2 * s.head_dim * s.n_head_kv * 2  # K and V, f16, every layer
    assert d.kv_bytes["CUDA0"] == 1000 * per_cell
    assert d.kv_seconds["CUDA0"] == pytest.approx(1000 * per_cell / devs["CUDA0"].effective_bandwidth)
    full = decode_time(m, all_on(m, "CUDA0"), cfg, devs)  # default: the full context
    assert full.n_past == 8192 and full.kv_bytes["CUDA0"] == 8192 * per_cell


def test_sliding_window_reads_at_most_the_window(models: dict[str, ModelDescription]) -> None:
    m = models["gpt-oss-20b"]
    s = SPECS["gpt-oss-20b"]
    devs = free_switch_devices()
    d = decode_time(m, all_on(m, "CUDA0"), RunConfig(n_ctx=16384), devs, n_past=10000)
    r = 2 * s.head_dim * s.n_head_kv * 2
    assert d.kv_bytes["CUDA0"] == s.n_layer // 2 * r * (10000 + s.sliding_window)
    # --swa-full keeps every cell in the window's layers, and a decoded token reads them all
    full = decode_time(m, all_on(m, "CUDA0"), RunConfig(n_ctx=16384, swa_full=True), devs, n_past=10000)
    assert full.kv_bytes["CUDA0"] == s.n_layer * r * 10000


def test_kv_read_on_host_with_nkvo(models: dict[str, ModelDescription]) -> None:
    m = models["qwen3-30b-a3b"]
    d = decode_time(m, all_on(m, "CUDA0"), RunConfig(no_kv_offload=True), free_switch_devices(), n_past=100)
    assert set(d.kv_bytes) == {"CPU"}


# --- monotone -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["qwen3moe-tiny", "deepseek2-tiny", "gpt-oss-tiny"])
def test_moving_a_tensor_to_the_faster_device_never_slows(models: dict[str, ModelDescription], name: str) -> None:
    m = models[name]
    devs = free_switch_devices()
    cfg = RunConfig(n_ctx=2048)
    names = [t.name for t in m.tensors if t.loaded]
    random.Random(7).shuffle(names)
    overrides: dict[str, str] = {}
    p = layer_placement(m, ("CPU",) * m.hparams.n_layer, "CPU")
    last = decode_time(m, p, cfg, devs).seconds
    for n in names:
        overrides[n] = "CUDA0"
        p = layer_placement(m, ("CPU",) * m.hparams.n_layer, "CPU", overrides)
        t = decode_time(m, p, cfg, devs).seconds
        assert t <= last * (1 + 1e-12)
        last = t
    # moving the layers (their KV) as well
    for il in range(m.hparams.n_layer):
        layers = ("CUDA0",) * (il + 1) + ("CPU",) * (m.hparams.n_layer - il - 1)
        t = decode_time(m, layer_placement(m, layers, "CPU", overrides), cfg, devs).seconds
        assert t <= last * (1 + 1e-12)
        last = t


def test_more_gpu_layers_is_faster_with_real_costs(models: dict[str, ModelDescription]) -> None:
    from moeplace.cli.estimate_cmd import build_placement

    m = models["qwen3-30b-a3b"]
    gpus = parse_gpus(["rtx4090"])
    devs = device_set(gpus, host_device(64 * GIB, "ddr5-6000x2"))
    table = TensorTable.build(m)
    speeds = [estimate(m, build_placement(m, gpus, ngl, False, 0), RunConfig(), devs, table=table).tokens_per_second
              for ngl in range(0, m.hparams.n_layer + 2, 4)]
    assert speeds == sorted(speeds)


# --- routing profiles ---------------------------------------------------------------------------------------------


def test_distinct_experts_formula() -> None:
    p = np.array([1.0, 0.5, 0.5, 0.0])
    assert expected_distinct(p, 1) == pytest.approx(2.0)
    assert expected_distinct(p, 2) == pytest.approx(1 + 2 * (1 - 0.25))
    assert expected_distinct(p, 1000) == pytest.approx(3.0)
    # the speed model's per-block form is the same formula, row by row
    rows = distinct_by_block(np.array([p, p / 2]), 2)
    assert rows == pytest.approx([expected_distinct(p, 2), expected_distinct(p / 2, 2)])
    assert distinct_by_block(np.zeros((3, 0)), 8).tolist() == [0.0, 0.0, 0.0]  # blocks without experts


@pytest.mark.parametrize("batch", [1, 4, 64])
def test_uniform_profile_is_no_profile(models: dict[str, ModelDescription], batch: int) -> None:
    m = models["qwen3-30b-a3b"]
    hp = m.hparams
    uniform = {layer.index: np.full(hp.n_expert, 3.0) for layer in m.layers if layer.moe}
    cfg = RunConfig()
    a = tensor_costs(m, cfg, None, batch)
    b = tensor_costs(m, cfg, uniform, batch)
    assert np.array_equal(a.decode_bytes, b.decode_bytes) and np.array_equal(a.prefill_bytes, b.prefill_bytes)
    devs = free_switch_devices()
    p = layer_placement(m, ("CUDA0",) * hp.n_layer, "CUDA0",
                        {t.name: "CPU" for t in m.tensors if t.role is Role.ROUTED_EXPERT})
    assert decode_time(m, p, cfg, devs, None, batch).seconds == decode_time(m, p, cfg, devs, uniform, batch).seconds
    assert prefill_time(m, p, cfg, devs, None).seconds == prefill_time(m, p, cfg, devs, uniform).seconds


def test_skewed_routing_touches_fewer_experts_in_a_batch(models: dict[str, ModelDescription]) -> None:
    m = models["qwen3-30b-a3b"]
    hp = m.hparams
    rng = np.random.default_rng(3)
    skewed = {layer.index: rng.zipf(1.5, hp.n_expert).astype(float) for layer in m.layers if layer.moe}
    cfg = RunConfig()
    expert = np.array([t.role is Role.ROUTED_EXPERT for t in m.loaded_tensors])
    one_u, one_s = tensor_costs(m, cfg, None, 1), tensor_costs(m, cfg, skewed, 1)
    # batch 1 touches n_expert_used experts whatever the skew (unless a probability had to be clipped at 1)
    assert one_s.decode_bytes[expert].sum() <= one_u.decode_bytes[expert].sum() * (1 + 1e-9)
    many_u, many_s = tensor_costs(m, cfg, None, 32), tensor_costs(m, cfg, skewed, 32)
    assert many_s.decode_bytes[expert].sum() < many_u.decode_bytes[expert].sum()


def test_table_memo_follows_the_routing_matrix_and_run_config(models: dict[str, ModelDescription]) -> None:
    """A shared TensorTable remembers what each routing matrix and run configuration imply: a second matrix
    or configuration gets its own figures (the same as a fresh table's), the remembered arrays cannot be
    changed in place, and only the last few matrices are kept."""
    from moeplace.speed import ROUTED_MEMO, routing_matrix

    m = models["qwen3-30b-a3b"]
    hp = m.hparams
    rng = np.random.default_rng(5)
    devs = free_switch_devices()
    p = layer_placement(m, ("CUDA0",) * hp.n_layer, "CUDA0",
                        {t.name: "CPU" for t in m.tensors if t.role is Role.ROUTED_EXPERT})
    table = TensorTable.build(m)
    matrices = [routing_matrix(m, {layer.index: rng.zipf(1.3 + i / 4, hp.n_expert).astype(float)
                                   for layer in m.layers if layer.moe}) for i in range(ROUTED_MEMO + 2)]
    for cfg in (RunConfig(), RunConfig(n_ctx=16384, type_k="q8_0", n_ubatch=1024)):
        for mat in matrices:
            shared = estimate(m, p, cfg, devs, mat, table=table, batch=8, n_past=100)
            fresh = estimate(m, p, cfg, devs, mat, table=TensorTable.build(m), batch=8, n_past=100)
            assert shared.decode.seconds == fresh.decode.seconds
            assert shared.prefill.seconds == fresh.prefill.seconds
            assert shared.memory == fresh.memory
    assert len(table.memo["routed"]) == ROUTED_MEMO
    costs = tensor_costs(m, RunConfig(), matrices[-1], 8, table)
    with pytest.raises(ValueError):
        costs.decode_bytes[0] = 0.0


def test_profile_checks() -> None:
    with pytest.raises(SpeedError):
        normalise_probs(np.ones(7), 8, 2)
    with pytest.raises(SpeedError):
        normalise_probs(np.array([1.0, -1.0]), 2, 1)
    p = normalise_probs(np.array([30.0, 10.0, 0.0, 0.0]), 4, 2)
    assert p.sum() == pytest.approx(1.0 + 0.5) and p.max() == 1.0  # 1.5 and 0.5 -> the first clipped at 1


def test_batch_reads_weights_once(models: dict[str, ModelDescription]) -> None:
    m = models["qwen3-30b-a3b"]
    devs = free_switch_devices()
    p = all_on(m, "CUDA0")
    one = decode_time(m, p, RunConfig(n_seq_max=8), devs, batch=1, n_past=0)
    eight = decode_time(m, p, RunConfig(n_seq_max=8), devs, batch=8, n_past=0)
    assert one.seconds < eight.seconds < 8 * one.seconds
    assert eight.tokens_per_second > one.tokens_per_second


# --- linearisation ------------------------------------------------------------------------------------------------


def test_linearisation_reproduces_decode(models: dict[str, ModelDescription]) -> None:
    m = models["qwen3-30b-a3b"]
    devs = free_switch_devices()
    overrides = {t.name: "CPU" for t in m.tensors if t.role is Role.ROUTED_EXPERT and (t.block or 0) % 3 == 0}
    p = layer_placement(m, ("CUDA0",) * m.hparams.n_layer, "CUDA0", overrides)
    costs = tensor_costs(m, RunConfig(), None, 4)
    bw = np.array([devs[p.tensor_devices[n]].effective_bandwidth for n in costs.names])
    d = decode_time(m, p, RunConfig(), devs, None, 4, n_past=0)
    assert costs.decode_seconds(bw) == pytest.approx(sum(d.weight_seconds.values()), rel=1e-12)


def test_gpu_expert_efficiency_slows_only_routed_experts_and_the_solver_sees_it(
        models: dict[str, ModelDescription]) -> None:
    """A GPU's routed experts decode at its expert efficiency (Device.expert_cost): the estimate's GPU weight time
    grows by exactly the experts' bytes x (1/efficiency - 1) over its bandwidth, and the solver's per-tensor costs
    (linear_seconds) say the same."""
    m = models["qwen3-30b-a3b"]
    devs = free_switch_devices()
    slow = {**devs, "CUDA0": replace(devs["CUDA0"], expert_efficiency=0.5)}
    p = all_on(m, "CUDA0")
    base = decode_time(m, p, RunConfig(), devs, n_past=0).weight_seconds["CUDA0"]
    both = decode_time(m, p, RunConfig(), slow, n_past=0).weight_seconds["CUDA0"]
    costs = tensor_costs(m, RunConfig(), None, 1)
    experts = sum(b for n, b in zip(costs.names, costs.decode_bytes) if ".ffn_" in n and "_exps" in n)
    assert experts > 0
    assert both - base == pytest.approx(experts * (2.0 - 1.0) / devs["CUDA0"].effective_bandwidth, rel=1e-9)
    gpu = [slow["CUDA0"], slow["CPU"]]
    # (the column prices every tensor on the GPU, the token embedding's one row too, which the estimate reads on
    # the host: a few bytes of difference)
    assert linear_seconds(m, RunConfig(), gpu).seconds[:, 0].sum() == pytest.approx(both, rel=1e-5)
    assert replace(devs["CPU"], expert_efficiency=0.5).expert_cost == 1.0  # the host's experts are its bytes


def test_gpu_prompt_kernels_lose_rate_on_few_rows(models: dict[str, ModelDescription]) -> None:
    """Each FLOP of a multiplication over r tokens costs 1 + half_rate_rows / r on a GPU (speed.gpu_flop_cost): a
    routed expert gets ub x k / (distinct experts) of a ubatch's tokens, a dense weight all of them. The prompt
    estimate and the solver's per-tensor costs grow by the same amount."""
    m = models["qwen3-30b-a3b"]
    devs = free_switch_devices(gpu_bw=1e18)  # compute-bound
    half = 48.0
    slow = {**devs, "CUDA0": replace(devs["CUDA0"], half_rate_rows=half)}
    p = all_on(m, "CUDA0")
    cfg = RunConfig(n_ubatch=512)
    extra = (prefill_time(m, p, cfg, slow).seconds_by_device["CUDA0"]
             - prefill_time(m, p, cfg, devs).seconds_by_device["CUDA0"])
    tc = tensor_costs(m, cfg)
    rows = dict(zip(tc.names, tc.prefill_rows))
    hp = m.hparams
    expert = next(n for n in tc.names if "ffn_up_exps" in n)
    distinct = expected_distinct(np.full(hp.n_expert, hp.n_expert_used / hp.n_expert), 512)
    assert rows[expert] == pytest.approx(512 * hp.n_expert_used / distinct)
    assert rows["blk.0.attn_q.weight"] == 512
    rate = devs["CUDA0"].flops * devs["CUDA0"].compute_efficiency
    assert extra == pytest.approx(half * float(np.sum(tc.prefill_flops / tc.prefill_rows)) / rate, rel=1e-9)
    lin = [linear_seconds(m, cfg, [d["CUDA0"], d["CPU"]], prompt_per_generated=1).seconds[:, 0].sum()
           for d in (devs, slow)]
    assert (lin[1] - lin[0]) * tc.n_ubatch == pytest.approx(extra, rel=1e-9)


# --- prefill ------------------------------------------------------------------------------------------------------


def test_prefill_copies_only_host_experts_the_ubatch_uses(models: dict[str, ModelDescription]) -> None:
    """A ubatch is one prompt's tokens, which route alike (routing.PROMPT_ROUTING_SHAPE): it uses fewer experts
    than as many independent tokens would, and only those are copied; builds before llama.cpp PR 15346 copy every
    expert (Device.copies_all_experts)."""
    m = models["qwen3-30b-a3b"]
    hp = m.hparams
    devs = free_switch_devices()
    host = [t for t in m.tensors if t.role is Role.ROUTED_EXPERT and t.block is not None and t.block < 10]
    p = layer_placement(m, ("CUDA0",) * hp.n_layer, "CUDA0", {t.name: "CPU" for t in host})
    ub = 64
    rate = hp.n_expert_used / hp.n_expert
    used = hp.n_expert * (1 - (1 + ub * rate / PROMPT_ROUTING_SHAPE) ** -PROMPT_ROUTING_SHAPE)
    independent = hp.n_expert * (1 - (1 - rate) ** ub)
    assert hp.n_expert_used < used < 0.75 * independent
    pre = prefill_time(m, p, RunConfig(n_ubatch=ub), devs)
    assert pre.transfer_bytes == pytest.approx(sum(t.nbytes / hp.n_expert * used for t in host))
    assert pre.transfer_seconds == pytest.approx(pre.transfer_bytes / devs["CUDA0"].link_bandwidth)
    old = {**devs, "CUDA0": replace(devs["CUDA0"], copies_all_experts=True)}
    assert prefill_time(m, p, RunConfig(n_ubatch=ub), old).transfer_bytes == pytest.approx(sum(t.nbytes for t in host))
    # the solver's linear form copies the same bytes (host column: copy time at the link's rate)
    cfg = RunConfig(n_ubatch=ub)
    slow = {**devs, "CUDA0": replace(devs["CUDA0"], link_bandwidth=1e10)}
    slow_old = {**slow, "CUDA0": replace(slow["CUDA0"], copies_all_experts=True)}
    a = linear_seconds(m, cfg, list(slow.values()), prompt_per_generated=ub)
    b = linear_seconds(m, cfg, list(slow_old.values()), prompt_per_generated=ub)
    rows = [a.index[t.name] for t in host]
    extra = float(np.sum(b.seconds[rows, 1] - a.seconds[rows, 1]))
    more = prefill_time(m, p, cfg, slow_old).transfer_bytes - prefill_time(m, p, cfg, slow).transfer_bytes
    assert more > 0 and extra == pytest.approx(more / host_copy_bandwidth(slow["CUDA0"], cfg), rel=1e-6)


def test_ik_llama_cpp_offloads_host_experts_only_when_each_gets_enough_tokens(
        models: dict[str, ModelDescription]) -> None:
    """ik_llama.cpp's GPU takes a host expert tensor over for a prompt only when ubatch x experts used reaches
    32 x experts (qwen3-30b-a3b: 128 experts, 8 used, so from -ub 512): below that the CPU computes the experts
    (no copy) while dense host weights still move; estimate and the solver's linear form apply the same rule."""
    from moeplace.hardware import for_engine

    m = models["qwen3-30b-a3b"]
    hp = m.hparams
    assert (hp.n_expert, hp.n_expert_used) == (128, 8)
    devs = for_engine(free_switch_devices(), "ik_llama.cpp")
    host = {t.name: "CPU" for t in m.tensors
            if t.block is not None and t.block < 10 and (t.role is Role.ROUTED_EXPERT or "attn_q" in t.name)}
    p = layer_placement(m, ("CUDA0",) * hp.n_layer, "CUDA0", host)
    dense = sum(t.nbytes for t in m.tensors if t.name in host and t.role is not Role.ROUTED_EXPERT)
    expert = np.array([n in host and "_exps" in n for n in TensorTable.build(m).names])
    for ub, experts_move in ((256, False), (511, False), (512, True), (1024, True)):
        cfg = RunConfig(n_ubatch=ub, n_batch=max(ub, 2048))
        pre = prefill_time(m, p, cfg, devs)
        mainline = prefill_time(m, p, cfg, free_switch_devices())
        assert (pre.transfer_bytes > dense * 1.5) is experts_move, ub
        assert pre.transfer_bytes == pytest.approx(mainline.transfer_bytes if experts_move else dense), ub
        cpu, cpu_mainline = (x.seconds_by_device.get("CPU", 0.0) for x in (pre, mainline))
        assert cpu == pytest.approx(cpu_mainline) if experts_move else cpu > 10 * cpu_mainline  # it computes them
        def host_column(d: dict, c: RunConfig) -> np.ndarray:
            return linear_seconds(m, c, [d["CUDA0"], d["CPU"]], prompt_per_generated=1).seconds[:, 1]

        same = cfg if experts_move else cfg.with_(op_offload=False)
        assert host_column(devs, cfg)[expert] == pytest.approx(host_column(free_switch_devices(), same)[expert])


# --- energy, paging, estimate -------------------------------------------------------------------------------------


def test_energy_arithmetic(models: dict[str, ModelDescription]) -> None:
    m = models["qwen3-30b-a3b"]
    devs = free_switch_devices()
    d = decode_time(m, all_on(m, "CUDA0"), RunConfig(), devs, n_past=0)
    e = energy(d, devs)
    T = d.seconds
    g, c = devs["CUDA0"], devs["CPU"]
    expected = g.power * d.busy_seconds("CUDA0") + g.idle_power * (T - d.busy_seconds("CUDA0"))
    expected += c.power * d.busy_seconds("CPU") + c.idle_power * (T - d.busy_seconds("CPU"))
    assert e.joules_per_token == pytest.approx(expected)
    assert e.cost_per_million(0.16) == pytest.approx(expected * 1e6 / 3.6e6 * 0.16)


def test_ram_shortage_costs_disk_reads(models: dict[str, ModelDescription]) -> None:
    m = models["qwen3-30b-a3b"]
    hp = m.hparams
    gpus = parse_gpus(["rtx3090"])
    p = layer_placement(m, ("CUDA0",) * hp.n_layer, "CUDA0",
                        {t.name: "CPU" for t in m.tensors if t.role is Role.ROUTED_EXPERT})
    roomy = estimate(m, p, RunConfig(), device_set(gpus, host_device(64 * GIB, 80)))
    tight = estimate(m, p, RunConfig(), device_set(gpus, host_device(8 * GIB, 80)))
    assert roomy.host.fits and roomy.decode.paging_seconds == 0
    assert not tight.host.fits and tight.host.possible
    host_read = tight.decode_batch1.weight_bytes["CPU"]
    assert tight.decode_batch1.paging_seconds == pytest.approx(
        tight.host.paged_fraction * host_read / catalog().disk_bandwidth)
    assert tight.tokens_per_second < roomy.tokens_per_second


def test_estimate_reports_everything(models: dict[str, ModelDescription]) -> None:
    m = models["gpt-oss-20b"]
    gpus = parse_gpus(["rtx4060ti-16g"])
    devs = device_set(gpus, host_device(32 * GIB, "ddr5-6000x2"))
    e = estimate(m, all_on(m, "CUDA0"), RunConfig(n_ctx=16384, n_seq_max=2), devs)
    assert set(e.memory) == {"CUDA0", "CPU"} and e.fits["CUDA0"].fits
    assert e.decode.batch == 2 and e.decode_batch1.batch == 1
    assert e.tokens_per_second > 0 and e.prefill.tokens_per_second > 0 and e.energy.joules_per_token > 0
    assert e.memory["CUDA0"].kv == sum(x.total for x in kv_bytes_per_layer(m, RunConfig(n_ctx=16384, n_seq_max=2)))
    with pytest.raises(SpeedError):
        estimate(m, all_on(m, "CUDA0"), RunConfig(), {"CUDA0": devs["CUDA0"]})


def test_switch_costs_count(models: dict[str, ModelDescription]) -> None:
    m = models["qwen3-30b-a3b"]
    hp = m.hparams
    devs = free_switch_devices()
    devs = {k: replace(v, link_latency=1e-5) for k, v in devs.items()}
    experts = {t.name: "CPU" for t in m.tensors if t.role is Role.ROUTED_EXPERT and t.block in (3, 7)}
    p = layer_placement(m, ("CUDA0",) * hp.n_layer, "CUDA0", experts)
    d = decode_time(m, p, RunConfig(), devs, n_past=0)
    # embedding (host) -> GPU, then GPU -> host -> GPU around each of the two blocks' experts
    assert d.switches == 1 + 2 * 2
    assert d.switch_seconds == pytest.approx(d.switches * 1e-5, rel=1e-6)


# --- the host's compute side, depth, links (issue 9) ----------------------------------------------------------------


def _cpu_only(m: ModelDescription, host: Device) -> float:
    return decode_time(m, all_on(m, "CPU"), RunConfig(), {"CPU": host}, n_past=0).seconds


def test_host_bandwidth_saturates_with_threads_and_numa(models: dict[str, ModelDescription]) -> None:
    m = models["qwen3-30b-a3b"]
    base = host_device(64 * GIB, "ddr5-4800x12", threads=4, cores=32, available=64 * GIB)
    base = replace(base, thread_bandwidth=10e9, core_rate=0.0, layer_seconds=0.0)
    # 4 threads draw 40 GB/s of a 460.8 GB/s peak: the threads are the limit, and more of them help ...
    assert base.effective_bandwidth == pytest.approx(40e9)
    many = replace(base, threads=32)
    assert many.effective_bandwidth == pytest.approx(base.bandwidth * base.efficiency)
    assert _cpu_only(m, many) < _cpu_only(m, base) / 2
    # ... until the channels are: past saturation the peak decides.
    assert replace(many, threads=64).effective_bandwidth == many.effective_bandwidth
    # A second NUMA node's bandwidth counts numa_gain of itself without NUMA-aware allocation.
    two = replace(many, numa_nodes=2, numa_gain=0.5)
    assert two.effective_bandwidth == pytest.approx(many.effective_bandwidth * 0.75)


def test_host_decode_is_the_larger_of_reading_and_computing(models: dict[str, ModelDescription]) -> None:
    m = models["qwen3-30b-a3b"]
    host = replace(host_device(64 * GIB, 100, threads=8, cores=8, available=64 * GIB), layer_seconds=0.0,
                   thread_bandwidth=0.0, quant_cost=())
    read_only = _cpu_only(m, replace(host, core_rate=0.0))
    fast_cores = _cpu_only(m, replace(host, core_rate=1e12))
    assert fast_cores == pytest.approx(read_only)  # memory-bound: compute hides under the reading
    slow = _cpu_only(m, replace(host, core_rate=1e8))
    assert slow > 5 * read_only
    # compute-bound: half the threads, twice the time; a type that costs twice as much per element doubles it
    assert _cpu_only(m, replace(host, core_rate=1e8, threads=4)) == pytest.approx(2 * slow, rel=0.02)
    costly = tuple((t, 2.0) for t in TensorTable.build(m).type_names)
    assert _cpu_only(m, replace(host, core_rate=1e8, quant_cost=costly)) == pytest.approx(2 * slow, rel=0.02)


def test_host_prompt_work_is_costed_by_the_prefill_table_in_estimate_and_solver(
        models: dict[str, ModelDescription]) -> None:
    """Prompt FLOPs on the host are costed by the prefill table (llama.cpp's batch kernels), not by the decode
    table, and estimate and the solver's linear prefill (linear_seconds) apply the same rule."""
    m = models["qwen3-30b-a3b"]
    p = all_on(m, "CPU")
    cfg = RunConfig(n_ctx=4096)
    host = replace(host_device(64 * GIB, 100, threads=8, cores=8, available=64 * GIB), flops=1e10,
                   quant_cost=(), prefill_cost=())
    types = TensorTable.build(m).type_names
    double = tuple((t, 2.0) for t in types)

    def prompt(h: Device) -> tuple[float, float]:
        """Host seconds of one ubatch per estimate, and per the solver's linear costs (prompt part only)."""
        e = estimate(m, p, cfg, {"CPU": h}, n_prompt=cfg.n_ubatch).prefill.seconds_by_device["CPU"]
        with_prompt, without = (linear_seconds(m, cfg, [h], prompt_per_generated=k).seconds[:, 0].sum()
                                for k in (1.0, 0.0))
        return e, (with_prompt - without) * cfg.n_ubatch

    base_e, base_lin = prompt(host)
    # compute-bound: the weight FLOPs, which the solver sees, plus the attention (3% here), which it does not
    assert base_lin == pytest.approx(base_e, rel=0.05) and base_lin < base_e
    e, lin = prompt(replace(host, prefill_cost=double))
    assert lin == pytest.approx(2 * base_lin, rel=1e-6) and e - base_e == pytest.approx(base_lin, rel=1e-6)
    e, lin = prompt(replace(host, quant_cost=double))  # the decode table leaves prompts alone
    assert (e, lin) == pytest.approx((base_e, base_lin), rel=1e-6)
    # a GPU's prompt kernels are not costed by the host's table
    gpu = parse_gpus(["rtx3090"])[0]
    assert np.all(TensorTable.build(m).prefill_cost(replace(gpu, prefill_cost=double)) == 1.0)


def test_a_gpus_routed_experts_cost_more_per_prompt_flop_in_estimate_and_solver(
        models: dict[str, ModelDescription]) -> None:
    """MUL_MAT_ID runs below a dense multiplication's rate (Device.expert_compute): on a GPU the routed experts'
    prompt FLOPs cost 1 / expert_compute each, in the estimate and in the solver's linear prefill alike; the
    dense weights' FLOPs and the host are not affected."""
    from moeplace.speed import tensor_costs

    m = models["qwen3-30b-a3b"]
    cfg = RunConfig(n_ctx=4096)
    gpu = replace(parse_gpus(["rtx3090"])[0], expert_compute=1.0, half_rate_rows=0.0)
    host = host_device(64 * GIB, 100, threads=8, cores=8, available=64 * GIB)
    p = all_on(m, "CUDA0")
    table = TensorTable.build(m)
    flops = tensor_costs(m, cfg, table=table).prefill_flops
    share = float(np.sum(flops[table.is_expert]) / np.sum(flops))

    def prompt(g: Device) -> tuple[float, float]:
        e = estimate(m, p, cfg, {"CUDA0": g, "CPU": host}, n_prompt=cfg.n_ubatch).prefill.seconds_by_device
        with_prompt, without = (linear_seconds(m, cfg, [g, host], prompt_per_generated=k).seconds[:, 0].sum()
                                for k in (1.0, 0.0))
        return e["CUDA0"], (with_prompt - without) * cfg.n_ubatch

    base_e, base_lin = prompt(gpu)
    e, lin = prompt(replace(gpu, expert_compute=0.5))
    # compute-bound at 512 rows: the experts' share of the FLOPs takes twice the time (a few small tensors are
    # bound by their reads, so a little less in the solver's per-tensor sum); the estimate adds the same
    assert 0.5 < share < 1
    assert base_lin * (1 + 0.95 * share) < lin <= base_lin * (1 + share)
    assert e - base_e == pytest.approx(lin - base_lin, rel=0.03)
    assert replace(host, expert_compute=0.5).expert_flop_cost == 1.0


def test_decode_and_prefill_at_a_depth(models: dict[str, ModelDescription]) -> None:
    m = models["qwen3-30b-a3b"]
    devs = free_switch_devices()
    p = all_on(m, "CUDA0")
    cfg = RunConfig(n_ctx=32768)
    shallow, deep = (estimate(m, p, cfg, devs, depth=d, n_prompt=2048) for d in (0, 16384))
    assert shallow.decode_batch1.n_past == 0 and deep.decode_batch1.n_past == 16384
    assert deep.tokens_per_second < shallow.tokens_per_second
    assert (shallow.prefill.n_tokens, shallow.prefill.depth, deep.prefill.depth) == (2048, 0, 16384)
    assert deep.prefill.tokens_per_second < shallow.prefill.tokens_per_second
    # a prompt of 4 ubatches costs what its 4 ubatches cost, the later ones attending to more context
    one = prefill_time(m, p, cfg, devs, n_prompt=512, depth=0).seconds
    four = prefill_time(m, p, cfg, devs, n_prompt=2048, depth=0).seconds
    parts = sum(prefill_time(m, p, cfg, devs, n_prompt=512, depth=d).seconds for d in (0, 512, 1024, 1536))
    assert four == pytest.approx(parts, rel=1e-9) and four > 4 * one


def test_cuda_vector_attention_rereads_the_kv_cache(models: dict[str, ModelDescription]) -> None:
    """llama.cpp's CUDA kernel choice for a decoded token: a quantized cache (or Ada and later at a short context)
    takes the vector kernel, which reads each KV head once per query head; an f16 cache with an even GQA ratio
    takes the GQA-aware matrix kernel on Ampere, and on Ada from 8192 cells when the ratio is above 4; other
    backends read the cache once. The repeats stay in the L2 cache while a block's K and V fit there."""
    m = models["qwen3-30b-a3b"]  # 32 query heads per 4 KV heads: ratio 8
    gqa = m.hparams.n_head // m.layers[0].n_head_kv
    ampere, ada = parse_gpus(["rtx3090"])[0], parse_gpus(["rtx4090"])[0]
    assert (ampere.l2_cache, ada.l2_cache) == (6 << 20, 72 << 20)
    small_l2 = replace(ada, l2_cache=1 << 20)
    rocm = parse_gpus(["rocm:rtx3090"])[0]
    devs = [ampere, small_l2, rocm, ada]

    def rereads(cfg: RunConfig, depth: int) -> list[float]:
        return list(kv_rereads(m, cfg, devs, depth, kv_read_bytes_per_layer(m, cfg, depth))[0])

    q8, f16 = RunConfig(n_ctx=32768, type_k="q8_0", type_v="q8_0"), RunConfig(n_ctx=32768)
    # a block's q8_0 cache at 16K is 17 MiB: over the 3090's 6 MiB of L2, within the 4090's 72 MiB
    assert rereads(q8, 16384) == [gqa - 1, gqa - 1, 0, 0]
    assert rereads(f16, 4096) == [0, gqa - 1, 0, 0]
    assert rereads(f16, 8192) == [0, 0, 0, 0]
    assert rereads(q8, 1024) == [0, gqa - 1, 0, 0]  # 1.1 MiB a block: within the 3090's L2 too
    assert not kv_rereads(m, replace(q8, flash_attn=False), devs, 16384,
                          kv_read_bytes_per_layer(m, q8, 16384)).any()
    # the time: the cache's bytes once, plus the rereads' bytes times the share that reaches memory
    p = all_on(m, "CUDA0")
    host = host_device(64 * GIB, 100, available=64 * GIB)

    def kv_time(share: float) -> float:
        d = device_set((replace(ampere, kv_reread_share=share, efficiency=0.5),), host)
        return estimate(m, p, q8, d, depth=16384).decode_batch1.kv_seconds["CUDA0"]

    once = kv_read_bytes_per_layer(m, q8, 16384).sum() / (ampere.bandwidth * 0.5)
    assert kv_time(0.5) - kv_time(0.0) == pytest.approx(once * (gqa - 1) * 0.5, rel=1e-6)


def test_link_decides_the_prompt_copy(models: dict[str, ModelDescription]) -> None:
    m = models["qwen3-30b-a3b"]
    host = host_device(64 * GIB, 100, available=64 * GIB)
    overrides = {t.name: "CPU" for t in m.tensors if t.role is Role.ROUTED_EXPERT}
    p = layer_placement(m, ("CUDA0",) * m.hparams.n_layer, "CUDA0", overrides)
    x16 = prefill_time(m, p, RunConfig(), device_set(parse_gpus(["rtx3090"], links=["pcie4x16"]), host))
    x4 = prefill_time(m, p, RunConfig(), device_set(parse_gpus(["rtx3090"], links=["pcie4x4"]), host))
    assert x4.transfer_seconds == pytest.approx(4 * x16.transfer_seconds) and x4.transfer_bytes == x16.transfer_bytes
    gpus = parse_gpus(["rtx3090,rtx3090"], links=["pcie4x16,3.0x8"])
    assert gpus[0].link_bandwidth == pytest.approx(gpus[1].link_bandwidth * (1.969 * 16) / (0.985 * 8))
    assert not gpus[0].link_assumed and parse_gpus(["rtx3090"])[0].link_assumed


def test_work_then_timing_is_the_estimate(models: dict[str, ModelDescription]) -> None:
    m = models["qwen3-30b-a3b"]
    devs = device_set(parse_gpus(["rtx3090"]), host_device(64 * GIB, "ddr5-6000x2", threads=8))
    overrides = {t.name: "CPU" for t in m.tensors if t.role is Role.ROUTED_EXPERT and (t.block or 0) < 20}
    p = layer_placement(m, ("CUDA0",) * m.hparams.n_layer, "CUDA0", overrides)
    e = estimate(m, p, RunConfig(n_ctx=8192), devs, depth=1000, n_prompt=1024, batch=1)
    dw, pw = workload(m, p, RunConfig(n_ctx=8192), devs, depth=1000, n_prompt=1024)
    assert decode_from_work(dw, list(devs.values())) == e.decode_batch1
    assert prefill_from_work(pw, list(devs.values())) == e.prefill
