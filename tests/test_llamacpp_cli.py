"""The llama.cpp command-line reader against llama.cpp's own argument rules (common/arg.cpp, llama-bench.cpp)."""

from __future__ import annotations

import pytest

from moeplace.errors import MoeplaceError
from moeplace.llamacpp import LLM_FFN_EXPS_REGEX, Override
from moeplace.llamacpp_cli import MAX_BLOCKS, CommandLineError, looks_like_command, parse_command


def test_server_line() -> None:
    c = parse_command("CUDA_VISIBLE_DEVICES=0,1 ./build/bin/llama-server -m /m/DeepSeek-R1-00001-of-00009.gguf "
                      r"-ngl 99 -ot 'blk\.[0-9]\.ffn_.*_exps=CUDA0,blk\.1[0-9]\.ffn_.*_exps=CUDA1' -c 32768 -fa "
                      "-ctk q8_0 -t 32 -ub 2048 -b 4096 -ts 3,1 --host 0.0.0.0 --port 8080 --jinja --no-mmap")
    assert c.program == "llama-server" and not c.bench
    assert c.model == "/m/DeepSeek-R1-00001-of-00009.gguf" and c.n_gpu_layers == 99
    assert c.overrides == (Override(r"blk\.[0-9]\.ffn_.*_exps", "CUDA0"),
                           Override(r"blk\.1[0-9]\.ffn_.*_exps", "CUDA1"))
    assert (c.n_ctx, c.n_ubatch, c.n_batch, c.threads, c.type_k, c.flash_attn) == (32768, 2048, 4096, 32, "q8_0", "on")
    assert c.tensor_split == (3.0, 1.0) and c.mmap is False
    assert any("--host" in n and "--jinja" in n for n in c.notes)


def test_overrides_keep_command_line_order() -> None:
    # -ot before --cpu-moe is tried first; --n-cpu-moe N appends N block patterns where it stands.
    c = parse_command(r"llama-server -m m.gguf -ot 'blk\.5\.ffn_up_exps=CUDA0' --cpu-moe -ot 'x=CPU' --n-cpu-moe 2")
    assert [o.pattern for o in c.overrides] == [r"blk\.5\.ffn_up_exps", LLM_FFN_EXPS_REGEX, "x",
                                                rf"blk\.0{LLM_FFN_EXPS_REGEX}", rf"blk\.1{LLM_FFN_EXPS_REGEX}"]


def test_llama_bench_line() -> None:
    c = parse_command("llama-bench -m x.gguf -ngl 99 -ot 'exps=CPU;attn=CUDA0' --n_cpu_moe 1 -p 512 -n 128 "
                      "-d 0,4096 -fa 1 -mmp 0 -nkvo 1 -t 16 -o json")
    assert c.bench and c.program == "llama-bench"
    # llama-bench puts its --n-cpu-moe patterns after the -ot items, whatever the order on the line.
    assert [o.pattern for o in c.overrides] == ["exps", "attn", rf"blk\.0{LLM_FFN_EXPS_REGEX}"]
    assert (c.n_prompt, c.n_gen, c.depth, c.flash_attn, c.mmap, c.no_kv_offload, c.threads) == (
        512, 128, 0, "on", False, True, 16)
    assert any("-d 0,4096" in n for n in c.notes)


@pytest.mark.parametrize(("line", "named"), [
    ("llama-server -m x --frobnicate 3", "--frobnicate"),
    ("llama-server -m x -ngl", "-ngl"),
    ("llama-server -m x -ngl abc", "-ngl"),
    ("llama-server -m x -c -5", "-c"),
    ("llama-bench -m x -ngl 10,20", "-ngl"),
    ("llama-bench -m x -ot 'a=CPU,b=CPU'", "-ot"),
    ("llama-server -m x stray", "stray"),
    ("llama-server -m x -ctk q9_9", "-ctk"),
    ("llama-server -m x -ot foo", "foo"),
    ("llama-server -m x -ot 'exps=CUDA_Host'", "CUDA_Host"),
    ("python3 run.py -m x", "python3"),
    ("llama-server -m x -fa maybe -c 4096", "maybe"),
])
def test_bad_lines_name_the_flag(line: str, named: str) -> None:
    with pytest.raises(MoeplaceError) as e:
        parse_command(line)
    assert named in str(e.value) and "\n" not in str(e.value)


def test_word_list_and_continuations() -> None:
    words = ["llama-cli", "-m", "a.gguf", "--cpu-moe", "-n", "-1"]
    c = parse_command(words)
    assert c.n_gen == -1 and c.overrides == (Override(LLM_FFN_EXPS_REGEX, "CPU"),)
    assert parse_command("llama-server \\\n -m a.gguf \\\n -c 8192").n_ctx == 8192
    with pytest.raises(CommandLineError):
        parse_command("llama-server -m 'unterminated")


def test_a_huge_n_cpu_moe_is_clamped_not_expanded() -> None:
    # llama.cpp writes N patterns; past the last block they match nothing, so a huge N costs nothing to read.
    c = parse_command("llama-server -m m.gguf --n-cpu-moe 2147483647")
    assert len(c.overrides) == MAX_BLOCKS


def test_model_or_command_is_told_by_the_first_word() -> None:
    assert looks_like_command("llama-server") and looks_like_command("/opt/llama.cpp/build/bin/llama-bench")
    assert looks_like_command("CUDA_VISIBLE_DEVICES=0") and looks_like_command("llama-cli.exe")
    assert not looks_like_command("model.gguf") and not looks_like_command("hf://org/repo/model.gguf")
    with pytest.raises(CommandLineError, match="at least one above zero"):
        parse_command("llama-server -m m.gguf -ts 0,0")


def test_ik_llama_cpp_flags_are_named_not_called_without_effect() -> None:
    """-fmoe, -rtr, -mla, -amb change ik_llama.cpp's work and kernels: the note says the estimate is mainline
    llama.cpp's, and the flags without effect (--jinja) are listed apart."""
    c = parse_command("llama-server -m m.gguf -ngl 99 -ot exps=CPU -fmoe -rtr -mla 3 -amb 512 --jinja")
    ik = next(n for n in c.notes if n.startswith("ik_llama.cpp flags"))
    assert "-fmoe -rtr -mla -amb" in ik and "solve --target ik_llama.cpp" in ik
    plain = next(n for n in c.notes if n.startswith("read and ignored"))
    assert "--jinja" in plain and "-rtr" not in plain
