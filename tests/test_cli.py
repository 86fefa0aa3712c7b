"""The CLI's edge (moeplace/cli/__init__.py and the option types): every bad value is one ``Error:`` line with exit
code 2, Ctrl-C is ``interrupted`` with exit code 130, a closed or full stdout ends quietly; a hypothesis fuzz over
the option surface of inspect, solve, estimate and profile; and each hostile input from issue 14."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moeplace.cli import friendly_errors, main
from moeplace.model import ModelDescription, load_model
from moeplace.routing import ModelIdentity, Source, make_profile
from moeplace.routing_file import save_profile
from moeplace.testing import SPECS, write_model

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals, FIFOs and /dev")


def invoke(*args: str) -> click.testing.Result:
    return CliRunner().invoke(main, list(args))


def assert_one_error(r: click.testing.Result, *fragments: str) -> None:
    """Exit 2, no traceback, exactly one 'Error:' line, containing every fragment."""
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for f in fragments:
        assert f in errors[0], errors[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("edge")
    tiny = write_model("qwen3moe-tiny", d / "tiny.gguf")[0]
    md = load_model(tiny)
    out = {"tiny": tiny, "dir": d}
    evil = dataclasses.replace(SPECS["qwen3moe-tiny"], name="evil\x1b]0;pwned\x07\x1b[2Jname")
    out["evil"] = write_model(evil, d / "evil.gguf")[0]
    out["profile"] = save_profile(_uniform_profile(md), d / "tiny-profile.json")
    out["fifo"] = d / "fifo"
    if hasattr(os, "mkfifo"):
        os.mkfifo(out["fifo"])
    out["loop"] = d / "loop.gguf"
    out["loop"].symlink_to(out["loop"])
    out["file"] = d / "plain.txt"
    out["file"].write_text("x")
    return out


def _uniform_profile(md: ModelDescription):  # type: ignore[no-untyped-def]
    hp = md.hparams
    ident = ModelIdentity.of(md)
    counts = {il: [100 * hp.n_expert_used] * hp.n_expert for il in range(hp.n_layer)}
    return make_profile(ident, Source(kind="trace", tokens=100.0 * hp.n_expert), counts)


# --- friendly_errors -----------------------------------------------------------------------------------------


def test_keyboard_interrupt_is_exit_130() -> None:
    @click.command()
    @friendly_errors
    def cmd() -> None:
        raise KeyboardInterrupt

    r = CliRunner().invoke(cmd, [])
    assert r.exit_code == 130
    assert r.stderr == "interrupted\n"


@posix_only
def test_stdout_to_dev_full_is_one_line(files: dict[str, Path]) -> None:
    with open("/dev/full", "w") as full:
        p = subprocess.run([sys.executable, "-m", "moeplace", "inspect", str(files["tiny"]), "--tensors"],
                           stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert p.returncode == 1
    assert p.stderr.strip() == "Error: cannot write to standard output (No space left on device)"


@posix_only
def test_stdout_closed_early_is_quiet(files: dict[str, Path]) -> None:
    p = subprocess.Popen([sys.executable, "-m", "moeplace", "inspect", str(files["tiny"]), "--tensors"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()  # the reader is gone before the first line (like `| head -0`)
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) in (0, 1)
    assert "Traceback" not in err and "Exception ignored" not in err, err


# --- each hostile input of issue 14 --------------------------------------------------------------------------

HUGE = "9" * 400


@pytest.mark.parametrize(("args", "fragments"), [
    (["solve", "{tiny}", "--vram", "24G@1.2.3"], ["unknown GPU '24G@1.2.3'"]),
    (["solve", "{tiny}", "--vram", HUGE + "G"], ["larger than any machine"]),
    (["solve", "{tiny}", "--vram", "24G@" + HUGE], ["not a real bandwidth"]),
    (["solve", "{tiny}", "--vram", "8G", "--ram", HUGE + "G"], ["larger than any machine"]),
    (["solve", "{tiny}", "--vram", "8G", "--ram", "0G"], ["no memory at all"]),
    (["solve", "{tiny}", "--vram", "0G"], ["has no memory"]),
    (["solve", "{tiny}", "--vram", "24G@0"], ["0 GB/s is not a real bandwidth"]),
    (["estimate", "{tiny}", "--vram", "8G", "--ram-bw", "nan"], ["nan GB/s is not a real bandwidth"]),
    (["estimate", "{tiny}", "--vram", "8G", "--ram-bw", "inf"], ["inf GB/s is not a real bandwidth"]),
    (["estimate", "{tiny}", "--vram", "8G", "--ram-bw", "0"], ["0 GB/s is not a real bandwidth"]),
    (["estimate", "{tiny}", "--vram", "8G", "--ram-bw", "1e999"], ["not a real bandwidth"]),
    (["estimate", "{tiny}", "--vram", "8G", "--ram-bw", "ddr9-6000x2"], ["unknown RAM bandwidth 'ddr9-6000x2'"]),
    (["estimate", "{tiny}", "--vram", "8G", "--ram-bw", "ddr5-6000x0"], ["not a real memory system"]),
    (["estimate", "{tiny}", "--vram", "8G,8G", "-ts", "0,0"], ["--tensor-split '0,0'"]),
    (["estimate", "{tiny}", "--vram", "8G,8G", "-ts", "nan,1"], ["--tensor-split 'nan,1'"]),
    (["estimate", "{tiny}", "--vram", "8G", "--price", "nan"], ["'nan' is not a finite number"]),
    (["estimate", "{tiny}", "--vram", "8G", "--api-price", "inf"], ["'inf' is not a finite number"]),
    (["estimate", "{tiny}", "--vram", "8G", "--n-cpu-moe", "99999999999"], ["0<=x<=2147483647"]),
    (["solve", "{tiny}", "--vram", "8G", "-ub", "2147483648"], ["1<=x<=2147483647"]),
    (["solve", "{tiny}", "--vram", "8G", "-c", "2147483648"], ["up to 2147483647"]),
    (["solve", "{tiny}", "--vram", "8G", "--time-limit", "inf"], ["0.1<=x<=86400"]),
    (["solve", "{tiny}", "--vram", "8G", "--time-limit", "nan"], ["'nan' is not a finite number"]),
    (["solve", "{tiny}", "--vram", "8G", "--pin", "(a+)+$=CPU"], ["repeat inside a repeated group"]),
    (["solve", "{tiny}", "--vram", "8G", "--pin", "(ffn|ffn_up)*x=CPU"], ["alternation inside a repeated"]),
    (["solve", "{tiny}", "--vram", "8G", "--profile", "{fifo}"], ["named pipe"]),
    (["solve", "{tiny}", "--vram", "8G", "--calibration", "{fifo}"], ["named pipe"]),
    (["solve", "{tiny}", "--vram", "8G", "--calibration", "/dev/zero"], ["a device"]),
    (["inspect", "{fifo}"], ["named pipe"]),
    (["inspect", "{loop}"], ["loop of symbolic links"]),
    (["profile", "import", "{fifo}", "--model", "{tiny}"], ["named pipe"]),
    (["profile", "show", "{fifo}"], ["named pipe"]),
    (["solve", "{tiny}", "--vram", "8G", "--no-scripts", "--map", "{file}/map.svg"], ["is a file, not a folder"]),
    (["solve", "{tiny}", "--vram", "8G", "--no-scripts", "--map", "/proc/moeplace.svg"], ["/proc/moeplace.svg"]),
    (["solve", "{tiny}", "--vram", "8G", "--no-scripts", "--map", "{dir}/" + "m" * 300 + ".svg"], ["too long"]),
    (["solve", "{tiny}", "--vram", "8G", "--no-scripts", "--map", ""], ["empty"]),
    (["profile", "export", "{profile}", "-o", "{file}/hot.json"], ["is a file, not a folder"]),
])
def test_hostile_input_is_one_error(files: dict[str, Path], args: list[str], fragments: list[str]) -> None:
    if "{fifo}" in args and not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    argv = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
    t0 = time.perf_counter()
    r = invoke(*argv)
    assert time.perf_counter() - t0 < 10, "took long enough to be a hang"
    assert_one_error(r, *fragments)


def test_n_cpu_moe_past_the_last_block_is_every_block_and_fast(files: dict[str, Path]) -> None:
    t0 = time.perf_counter()
    big = invoke("estimate", str(files["tiny"]), "--vram", "8G", "--ram", "8G", "--json", "--n-cpu-moe", "2147483647")
    assert time.perf_counter() - t0 < 10
    every = invoke("estimate", str(files["tiny"]), "--vram", "8G", "--ram", "8G", "--json", "--cpu-moe")
    assert big.exit_code == 0 and every.exit_code == 0, big.stderr
    assert json.loads(big.stdout)["placement"] == json.loads(every.stdout)["placement"]


def test_a_context_past_the_trained_length_warns(files: dict[str, Path]) -> None:
    trained = load_model(files["tiny"]).hparams.n_ctx_train
    r = invoke("estimate", str(files["tiny"]), "--vram", "8G", "--ram", "8G", "-c", str(2 * trained))
    assert r.exit_code == 0, r.stderr
    assert f"beyond the {trained} tokens" in r.stderr
    r = invoke("estimate", str(files["tiny"]), "--vram", "8G", "--ram", "8G", "-c", str(trained))
    assert "beyond" not in r.stderr


def test_escape_sequences_in_the_model_name_are_shown_escaped(files: dict[str, Path]) -> None:
    for args in (["inspect", str(files["evil"])], ["solve", str(files["evil"]), "--vram", "8G", "--no-scripts"],
                 ["estimate", str(files["evil"]), "--vram", "8G"]):
        r = invoke(*args)
        assert r.exit_code == 0, r.stderr
        assert "\x1b" not in r.output and "\x07" not in r.output
        assert "evil\\x1b]0;pwned\\x07\\x1b[2Jname" in r.stdout


def test_json_output_never_holds_nan(files: dict[str, Path]) -> None:
    # Python's json.loads accepts NaN and Infinity; a strict parser does not: parse strictly.
    def strict(text: str) -> object:
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in --json output"))

    for args in (["estimate", str(files["tiny"]), "--vram", "8G", "--ram", "8G", "--json"],
                 ["solve", str(files["tiny"]), "--vram", "8G", "--ram", "8G", "--json", "--no-scripts"],
                 ["inspect", str(files["tiny"]), "--json"], ["profile", "show", str(files["profile"]), "--json"]):
        r = invoke(*args)
        assert r.exit_code == 0, r.stderr
        strict(r.stdout)


# --- Ctrl-C ----------------------------------------------------------------------------------------------------


def _wait_for_cp_sat(pid: int, timeout: float = 60.0) -> None:
    """Until CP-SAT runs in ``pid``: on Linux, until the process has the solver's worker threads (the main thread
    and at most a BLAS pool before it); elsewhere a fixed wait past the imports."""
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.is_dir():
        time.sleep(8)
        return
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        try:
            if len(list(tasks.iterdir())) >= 4:
                time.sleep(0.5)
                return
        except FileNotFoundError:
            return  # it ended: the assertions say how
        time.sleep(0.1)


@posix_only
def test_ctrl_c_during_cp_sat_exits_130_and_writes_nothing(model_path: Callable[[str], Path], tmp_path: Path) -> None:
    """A real process and a real SIGINT: OR-Tools catches SIGINT itself unless told not to, and then returned its
    best placement, so solve went on to write scripts and exit 0 (issue 14)."""
    out = tmp_path / "scripts"
    cmd = [sys.executable, "-m", "moeplace", "solve", str(model_path("qwen3-30b-a3b")), "--vram", "12G", "--ram",
           "32G", "--ram-bw", "80", "--solver", "cp-sat", "--time-limit", "120", "-c", "auto", "-o", str(out)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_cp_sat(p.pid)
    t0 = time.perf_counter()
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=60)
    assert time.perf_counter() - t0 < 10, "one Ctrl-C must stop the run"
    assert p.returncode == 130, stderr
    assert stderr.splitlines()[-1] == "interrupted"
    assert "Traceback" not in stderr and stdout == ""
    assert not out.exists()


# --- the fuzz ----------------------------------------------------------------------------------------------------

_SIZES = st.sampled_from(["8G", "24GiB", "24GB", "512M", "0G", "1B", "1.5T", "24", "24X", "-1G", "nanG", HUGE + "G",
                          "24G@936", "24G@1.2.3", "", " "])
_GPUS = st.one_of(_SIZES, st.sampled_from(["rtx3090", "rtx3060", "24G@0", "12G,8G", "vulkan:8G", "rpc:h:1=8G",
                                            "m4-max", "8G@" + HUGE, "8G@nan", ",", "rocm:rtx3090"]))
_NUMS = st.one_of(st.integers(-3, 5000).map(str),
                  st.sampled_from(["0", "-1", "2147483647", "2147483648", "99999999999", HUGE, "nan", "inf", "-inf",
                                   "1e308", "0.5", "abc", "", "0x10"]))
_FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), _NUMS)
_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_COMMON = {
    "--gpu": _GPUS, "--vram": _GPUS, "--ram": _SIZES, "--margin": _SIZES,
    "--ram-bw": st.one_of(_FLOATS, st.sampled_from(["ddr5-6000x2", "ddr9-6000x2", "ddr4-0", "lpddr5x-8533x8",
                                                    "epyc-9004", "desktop-ddr5"])),
    "--backend": st.sampled_from(["cuda", "rocm", "metal", "x"]),
    "-c": _NUMS, "-b": _NUMS, "-ub": _NUMS, "-np": _NUMS,
    "-ctk": st.sampled_from(["f16", "q8_0", "q4_0", "bf16", "zz"]), "-ctv": st.sampled_from(["f16", "q8_0", "q4_0"]),
    "-fa": st.sampled_from(["on", "off", "auto", "maybe"]),
}
_FLAGS_COMMON = ["-kvu", "--swa-full", "-nkvo", "--no-op-offload"]
_SOLVE = {**_COMMON, "-c": st.one_of(_NUMS, st.just("auto")),
          "--workload": st.one_of(st.sampled_from(["chat", "batch", "long-prompt", "8:1", "1:0", "0:1", "nan:1",
                                                   HUGE + ":1"]), _TEXT),
          "--pin": st.one_of(st.sampled_from([r"blk\.0\..*=CPU", "exps=CUDA0", "(a+)+=CPU", "[=CPU", "x=GPU9",
                                              "=CPU", r"^output\.weight$=CPU", ".*=CUDA0", ".*a.*b.*c.*d.*e=CPU"]),
                             _TEXT),
          "--solver": st.sampled_from(["dp", "cp-sat", "milp"]), "--time-limit": st.sampled_from(["0.1", "0.3", "0"]),
          "--port": _NUMS, "--host": _TEXT}
_ESTIMATE = {**_COMMON, "-ngl": _NUMS, "-ts": st.one_of(_TEXT, st.sampled_from(["3,1", "0,0", "1", "1,1,1", "-1,2",
                                                                                 "nan,1", "inf,1"])),
             "--n-cpu-moe": _NUMS, "--price": _FLOATS, "--api-price": _FLOATS}


@st.composite
def _argv(draw: st.DrawFn, options: dict[str, st.SearchStrategy[str]], flags: list[str]) -> list[str]:
    names = draw(st.lists(st.sampled_from(sorted(options)), max_size=5, unique=True))
    argv: list[str] = []
    for n in names:
        argv += [n, draw(options[n])]
    argv += draw(st.lists(st.sampled_from(flags), max_size=2, unique=True))
    return argv


@st.composite
def _command(draw: st.DrawFn) -> list[str]:
    which = draw(st.sampled_from(["inspect", "solve", "estimate", "profile-show", "profile-export"]))
    if which == "inspect":
        return ["inspect", "{tiny}", *draw(st.lists(st.sampled_from(["--tensors", "--json"]), unique=True))]
    if which == "solve":
        return ["solve", "{tiny}", "--no-scripts", *draw(_argv(_SOLVE, [*_FLAGS_COMMON, "--explain", "--json"]))]
    if which == "estimate":
        return ["estimate", "{tiny}", *draw(_argv(_ESTIMATE, [*_FLAGS_COMMON, "--cpu-moe", "--json"]))]
    if which == "profile-show":
        return ["profile", "show", "{profile}", *draw(st.lists(st.sampled_from(["--json", "--model={tiny}"]),
                                                             unique=True))]
    return ["profile", "export", "{profile}", *draw(st.one_of(st.just([]), _NUMS.map(lambda n: ["--cache", n])))]


@settings(max_examples=250, deadline=20_000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(argv=_command())
def test_fuzz_the_option_surface(files: dict[str, Path], argv: list[str]) -> None:
    """Any option values: exit 0, or exit 2 with one line saying what is wrong; never a traceback, never a hang
    (the deadline)."""
    args = [a.replace("{tiny}", str(files["tiny"])).replace("{profile}", str(files["profile"])) for a in argv]
    r = invoke(*args)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    assert r.exit_code in (0, 2), (args, r.exit_code, r.stderr)
    assert "Traceback" not in r.stderr
    if r.exit_code == 2:
        assert len([line for line in r.stderr.splitlines() if line.startswith("Error")]) == 1, (args, r.stderr)
    elif "--json" in args:
        json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"{c} in --json output of {args}"))
