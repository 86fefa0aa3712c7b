"""The model description: every factory architecture, checked against the factory's own expectations."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from moeplace.model import ModelError, Role, bytes_read_per_token, load_model, parse_tensor_name, role_of_kind
from moeplace.testing import FULL, TINY, expected


@pytest.mark.parametrize("name", TINY + FULL)
def test_counts_and_bytes_match_factory(model_path: Callable[[str], Path], name: str) -> None:
    m = load_model(model_path(name))
    e = expected(name)
    assert len(m.tensors) == e.n_tensors
    assert m.total_bytes == e.total_bytes
    assert m.hparams.arch == e.arch
    assert m.hparams.n_layer == e.n_layer
    assert m.hparams.n_expert == e.n_expert
    assert m.hparams.n_expert_used == e.n_expert_used
    assert len(m.paths) == e.n_files
    assert {r.value: b for r, b in m.bytes_by_role().items() if b} == {r: b for r, b in e.bytes_by_role.items() if b}
    for t in m.tensors:
        spec = e.tensor(t.name)
        assert t.shape == tuple(spec.ne) and t.nbytes == spec.nbytes, t.name


@pytest.mark.parametrize("name", ["qwen3-30b-a3b", "deepseek-v3", "gpt-oss-20b", "glm-4.5-air", "mixtral-8x7b"])
def test_expert_slices_are_exact(model_path: Callable[[str], Path], name: str) -> None:
    m = load_model(model_path(name))
    experts = [t for t in m.tensors if t.role is Role.ROUTED_EXPERT]
    assert experts
    for t in experts:
        assert t.n_expert == m.hparams.n_expert == t.shape[-1]
        assert t.expert_bytes * t.n_expert == t.nbytes


def test_deepseek_v3_structure(model_path: Callable[[str], Path]) -> None:
    m = load_model(model_path("deepseek-v3"))
    hp = m.hparams
    assert (hp.n_layer, hp.n_leading_dense, hp.n_expert, hp.n_expert_used, hp.n_expert_shared) == (61, 3, 256, 8, 1)
    assert hp.mla and hp.kv_lora_rank == 512 and hp.n_rot == 64
    assert [la.moe for la in m.layers] == [False] * 3 + [True] * 58
    assert all(la.attention == "mla" and la.has_kv for la in m.layers)
    assert any(t.kind == "FFN_EXP_PROBS_B" and t.role is Role.ROUTER for t in m.tensors)
    dense = [t for t in m.block_tensors(0)
             if t.name.startswith(("blk.0.ffn_gate.", "blk.0.ffn_up.", "blk.0.ffn_down."))]
    assert len(dense) == 3 and all(t.role is Role.DENSE_FFN for t in dense)


def test_deepseek_split_is_the_same_model(model_path: Callable[[str], Path]) -> None:
    whole, split = load_model(model_path("deepseek-v3")), load_model(model_path("deepseek-v3-split"))
    assert len(split.paths) == 9
    assert split.fingerprint() == whole.fingerprint()
    assert split.bytes_by_role() == whole.bytes_by_role()


def test_gpt_oss_sliding_window_sinks_and_biases(model_path: Callable[[str], Path]) -> None:
    m = load_model(model_path("gpt-oss-20b"))
    hp = m.hparams
    assert hp.swa_type == "standard" and hp.n_swa == 128
    # llama.cpp's set_swa_pattern(2): even layers slide, odd layers see the whole context
    assert [la.attention for la in m.layers] == ["swa", "full"] * 12
    assert any(t.kind == "ATTN_SINKS" and t.role is Role.ATTENTION for t in m.tensors)
    biases = [t for t in m.tensors if t.role is Role.ROUTED_EXPERT and t.name.endswith(".bias")]
    assert len(biases) == 3 * 24
    assert {t.ggml_type for t in m.tensors if t.role is Role.ROUTED_EXPERT and t.name.endswith(".weight")} == {"MXFP4"}


def test_glm_nextn_block_is_not_loaded(model_path: Callable[[str], Path]) -> None:
    m = load_model(model_path("glm-4.5-air"))
    assert m.hparams.nextn_layers == 1
    last = m.layers[-1]
    assert last.nextn and not last.has_kv
    assert sum(la.has_kv for la in m.layers) == 46
    assert all(t.role is Role.NEXTN for t in m.block_tensors(46))
    assert m.loaded_bytes == m.total_bytes - m.bytes_by_role()[Role.NEXTN]


def test_mixtral_is_llama_with_experts_and_llama_is_dense(model_path: Callable[[str], Path]) -> None:
    mix = load_model(model_path("mixtral-8x7b"))
    assert mix.arch == "llama" and mix.is_moe and mix.hparams.n_expert == 8
    dense = load_model(model_path("llama-3-8b"))
    assert not dense.is_moe and dense.bytes_by_role()[Role.ROUTED_EXPERT] == 0


def test_llama4_chunked_and_interleaved(model_path: Callable[[str], Path]) -> None:
    m = load_model(model_path("llama4-tiny"))
    assert m.hparams.swa_type == "chunked" and m.hparams.n_swa == 8192
    assert [la.attention for la in m.layers] == ["chunked", "chunked", "chunked", "full"]


def test_qwen3next_hybrid_recurrent_layers(model_path: Callable[[str], Path]) -> None:
    m = load_model(model_path("qwen3next-tiny"))
    assert any(la.attention == "recurrent" and not la.has_kv for la in m.layers)
    assert any(la.attention == "full" and la.has_kv for la in m.layers)
    assert m.bytes_by_role()[Role.SSM] > 0


def test_bytes_read_per_token_uniform(model_path: Callable[[str], Path]) -> None:
    m = load_model(model_path("qwen3-30b-a3b"))
    routed = m.bytes_by_role()[Role.ROUTED_EXPERT]
    embd = next(t for t in m.tensors if t.role is Role.TOKEN_EMBD)
    rest = m.loaded_bytes - routed - embd.nbytes
    assert bytes_read_per_token(m) == pytest.approx(rest + routed * 8 / 128 + embd.nbytes / m.hparams.n_vocab)


def test_fingerprint_ignores_quantisation(tmp_path: Path) -> None:
    from dataclasses import replace

    from moeplace.testing import SPECS, write_model

    a = load_model(write_model("qwen3moe-tiny", tmp_path / "a.gguf")[0])
    other = replace(SPECS["qwen3moe-tiny"], name="qwen3moe-tiny-2", n_expert_used=4)
    b = load_model(write_model(other, tmp_path / "b.gguf")[0])
    assert a.fingerprint() == load_model(write_model("qwen3moe-tiny", tmp_path / "c.gguf")[0]).fingerprint()
    assert b.hparams.n_expert_used == 4


def test_role_names_follow_gguf_constants() -> None:
    assert parse_tensor_name("blk.12.ffn_gate_up_exps.weight")[0] == 12
    kinds = {n: parse_tensor_name(n)[1] for n in (
        "blk.3.ffn_down_exps.weight", "blk.3.ffn_up_shexp.weight", "blk.3.ffn_gate_inp_shexp.weight",
        "blk.3.exp_probs_b.bias", "blk.3.attn_kv_a_mqa.weight", "blk.3.ffn_up_chexps.weight",
        "blk.3.nextn.eh_proj.weight", "blk.3.ssm_conv1d.weight", "output_norm.weight")}
    roles = {n: role_of_kind(k) for n, k in kinds.items() if k is not None}
    assert roles == {
        "blk.3.ffn_down_exps.weight": Role.ROUTED_EXPERT, "blk.3.ffn_up_shexp.weight": Role.SHARED_EXPERT,
        "blk.3.ffn_gate_inp_shexp.weight": Role.SHARED_EXPERT, "blk.3.exp_probs_b.bias": Role.ROUTER,
        "blk.3.attn_kv_a_mqa.weight": Role.ATTENTION, "blk.3.ffn_up_chexps.weight": Role.ROUTED_EXPERT,
        "blk.3.nextn.eh_proj.weight": Role.NEXTN, "blk.3.ssm_conv1d.weight": Role.SSM,
        "output_norm.weight": Role.OUTPUT_NORM,
    }


def test_imatrix_and_vocab_only_files_are_refused(tmp_path: Path) -> None:
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(tmp_path / "imatrix.gguf", arch=None)  # type: ignore[arg-type]
    w.add_type("imatrix")
    w.add_tensor("blk.0.ffn_up_exps.weight.counts", np.ones((1, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelError, match="imatrix"):
        load_model(tmp_path / "imatrix.gguf")
    w = gguf.GGUFWriter(tmp_path / "vocab.gguf", "llama")
    w.add_token_list(["a", "b"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelError, match="no tensors"):
        load_model(tmp_path / "vocab.gguf")
