"""``moeplace solve`` through click's CliRunner: the plan for a person, JSON, scripts, and one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from moeplace.cli import main


def run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.stdout, r.stderr


def test_plan_for_a_person(model_path: Callable[[str], Path], tmp_path: Path) -> None:
    out_dir = tmp_path / "scripts"
    code, out, err = run("solve", str(model_path("qwen3-30b-a3b")), "--vram", "12G", "--ram", "32G", "-c", "16384",
                         "-o", str(out_dir), "--explain")
    assert code == 0, err
    assert "blocks 0-47 run on CUDA0" in out
    assert "--n-cpu-moe" in out and "--cpu-moe" in out and "--fit" in out
    assert "solver: optimal" in out
    assert "llama-server -m" in out and "-ot" in out and "--fit off" in out
    assert "Why each block's experts went where they did" in out
    for f in ("server.sh", "cli.sh", "server.ps1", "cli.ps1", "llama-swap.yaml", "plan.json"):
        assert (out_dir / f).is_file()
    subprocess.run(["sh", "-n", str(out_dir / "server.sh")], check=True)
    subprocess.run(["sh", "-n", str(out_dir / "cli.sh")], check=True)
    doc = json.loads((out_dir / "plan.json").read_text())
    assert doc["llama_cpp"]["verified"] is True


def test_json_for_scripts(model_path: Callable[[str], Path]) -> None:
    code, out, err = run("solve", str(model_path("gpt-oss-20b")), "--vram", "24G,12G", "--json", "--no-scripts")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schema"] == "moeplace.plan/1"
    pred = doc["prediction"]
    assert pred["plan"]["fits"] is True
    assert all(pred["plan"]["seconds_per_generated_token"] <= b["seconds_per_generated_token"] * (1 + 1e-9)
               for b in pred["baselines"] if b["fits"])
    assert "-ts" in doc["llama_cpp"]["argv"]


def test_hostile_model_path_stays_literal(model_path: Callable[[str], Path], tmp_path: Path) -> None:
    weird = tmp_path / "my models $(touch PWNED) 'q' `x`"
    weird.mkdir()
    target = weird / "model.gguf"
    shutil.copy(model_path("qwen3moe-tiny"), target)
    out_dir = tmp_path / "out"
    code, _, err = run("solve", str(target), "--vram", "1G", "-o", str(out_dir))
    assert code == 0, err
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "llama-server").write_text('#!/bin/sh\nprintf "%s\\0" "$@"\n')
    (fake / "llama-server").chmod(0o755)
    res = subprocess.run(["sh", str(out_dir / "server.sh")], capture_output=True, cwd=tmp_path,
                         env={"PATH": f"{fake}:/usr/bin:/bin"}, check=True)
    argv = res.stdout.split(b"\0")
    assert str(target).encode() in argv
    assert not (tmp_path / "PWNED").exists()


def test_context_auto_shows_the_trade(model_path: Callable[[str], Path]) -> None:
    code, out, err = run("solve", str(model_path("qwen3-30b-a3b")), "--vram", "24G", "-c", "auto", "--no-scripts")
    assert code == 0, err
    assert "Context trade (-c auto)" in out
    assert "40960" in out


def test_dense_model_is_noted(model_path: Callable[[str], Path]) -> None:
    code, _out, err = run("solve", str(model_path("llama-3-8b")), "--vram", "8G", "--no-scripts")
    assert code == 0
    assert "dense model" in err


@pytest.mark.parametrize(("args", "message"), [
    (["--vram", "24GG"], "malformed size '24GG'"),
    (["--vram", "24"], "unknown GPU '24'"),
    (["--vram", "512M"], "no GPU has room for any layer"),
    (["--vram", "24G", "--pin", "exps=CUDA3"], "unknown device 'CUDA3'"),
    (["--vram", "24G", "--workload", "fast"], "workload 'fast'"),
    (["--vram", "24G", "-c", "lots"], "not a number of tokens or 'auto'"),
])
def test_bad_input_one_line(model_path: Callable[[str], Path], tmp_path: Path, args: list[str],
                            message: str) -> None:
    code, _out, err = run("solve", str(model_path("qwen3-30b-a3b")), *args, "-o", str(tmp_path / "o"))
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_truncated_model(tmp_path: Path, model_path: Callable[[str], Path]) -> None:
    p = tmp_path / "cut.gguf"
    p.write_bytes(model_path("qwen3moe-tiny").read_bytes()[:500])
    code, _, err = run("solve", str(p), "--vram", "8G", "--no-scripts")
    assert code == 2 and "truncated" in err and err.count("\n") == 1


def test_cp_sat_cross_check(model_path: Callable[[str], Path]) -> None:
    code, out, err = run("solve", str(model_path("qwen3moe-tiny")), "--vram", "1G", "--no-scripts",
                         "--solver", "cp-sat", "--time-limit", "20")
    assert code == 0, err
    assert "CP-SAT: proven optimal" in out


# --- -o DIR never loses anything ------------------------------------------------------------------------------

SCRIPT_SET = ["cli.ps1", "cli.sh", "llama-swap.yaml", "plan.json", "server.ps1", "server.sh"]


def test_out_dir_keeps_everything_that_was_there(model_path: Callable[[str], Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    (project / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (project / "src.py").write_text("print('mine')\n")
    model = project / "model.gguf"
    shutil.copy(model_path("qwen3moe-tiny"), model)
    monkeypatch.chdir(project)
    for out in (".", str(project), "."):  # twice into the same folder: the second run replaces its own files
        code, _, err = run("solve", "model.gguf", "--vram", "1G", "-o", out, "--map", "map.svg")
        assert code == 0, err
    assert (project / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert (project / "src.py").read_text() == "print('mine')\n"
    assert model.read_bytes() == model_path("qwen3moe-tiny").read_bytes()
    assert sorted(p.name for p in project.iterdir()) == sorted([".git", "src.py", "model.gguf", "map.svg",
                                                                *SCRIPT_SET])


def test_map_inside_the_out_dir_survives(model_path: Callable[[str], Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, _, err = run("solve", str(model_path("qwen3moe-tiny")), "--vram", "1G", "--map", str(out / "map.svg"),
                       "-o", str(out))
    assert code == 0, err
    assert (out / "map.svg").read_text().startswith("<svg")


def test_symlinked_out_dir_keeps_its_target(model_path: Callable[[str], Path], tmp_path: Path) -> None:
    target = tmp_path / "real"
    target.mkdir()
    (target / "notes.txt").write_text("keep")
    (tmp_path / "link").symlink_to(target)
    code, _, err = run("solve", str(model_path("qwen3moe-tiny")), "--vram", "1G", "-o", str(tmp_path / "link"))
    assert code == 0, err
    assert (target / "notes.txt").read_text() == "keep"
    assert (target / "plan.json").is_file()


@pytest.mark.parametrize("case", ["empty", "file", "foreign", "under-file"])
def test_bad_out_dir_is_one_line_and_writes_nothing(case: str, model_path: Callable[[str], Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f").write_text("data")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "server.sh").write_text("#!/bin/sh\necho my own server script\n")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    out = {"empty": "", "file": "f", "foreign": "d", "under-file": "f/sub"}[case]
    code, stdout, err = run("solve", str(model_path("qwen3moe-tiny")), "--vram", "1G", "-o", out)
    assert code == 2
    assert err.startswith("Error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err + stdout
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before


def test_scripts_use_an_absolute_model_path(model_path: Callable[[str], Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(model_path("qwen3moe-tiny"), tmp_path / "m.gguf")
    monkeypatch.chdir(tmp_path)
    code, _, err = run("solve", "m.gguf", "--vram", "1G", "-o", "out")
    assert code == 0, err
    absolute = str(tmp_path / "m.gguf")
    doc = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert doc["settings"]["model_path"] == absolute and doc["model"]["paths"] == [absolute]
    for f in ("server.sh", "cli.sh", "server.ps1", "llama-swap.yaml"):
        assert absolute in (tmp_path / "out" / f).read_text(encoding="utf-8-sig"), f


def test_powershell_has_bom_and_crlf_shell_has_lf(model_path: Callable[[str], Path], tmp_path: Path) -> None:
    code, _, err = run("solve", str(model_path("qwen3moe-tiny")), "--vram", "1G", "-o", str(tmp_path))
    assert code == 0, err
    for f in ("server.ps1", "cli.ps1"):
        data = (tmp_path / f).read_bytes()
        assert data.startswith(b"\xef\xbb\xbf")
        assert data.count(b"\n") == data.count(b"\r\n") > 3
    for f in ("server.sh", "cli.sh", "llama-swap.yaml", "plan.json"):
        data = (tmp_path / f).read_bytes()
        assert b"\r" not in data and not data.startswith(b"\xef\xbb\xbf")


def test_concurrent_runs_into_one_folder(model_path: Callable[[str], Path], tmp_path: Path) -> None:
    import sys

    out = tmp_path / "same"
    cmd = [sys.executable, "-m", "moeplace.cli", "solve", str(model_path("qwen3moe-tiny")), "--vram", "1G",
           "-o", str(out)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(3)]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errs
    assert sorted(p.name for p in out.iterdir()) == SCRIPT_SET  # no temporary file left behind
    json.loads((out / "plan.json").read_text())


def test_long_prompt_run_configuration(model_path: Callable[[str], Path]) -> None:
    """gpt-oss-120b on one 24 GB GPU for long prompts: a large ubatch, pinned memory, and the trade that says why;
    a flag the user gives is kept."""
    base = ["solve", str(model_path("gpt-oss-120b")), "--gpu", "rtx3090", "--ram", "64G", "--ram-bw", "ddr5-6000x2",
            "-c", "32768", "--workload", "long-prompt", "--no-scripts"]
    code, out, err = run(*base, "--json")
    assert code == 0, err
    doc = json.loads(out)
    argv = doc["llama_cpp"]["argv"]
    ub = int(argv[argv.index("-ub") + 1])
    assert ub >= 2048 and int(argv[argv.index("-b") + 1]) >= ub
    # pinned host memory: the stated default build spells --no-mmap as --load-mode none
    assert "--no-mmap" in argv or argv[argv.index("--load-mode") + 1] == "none"
    assert doc["settings"]["n_ubatch"] == ub
    rows = {(r["n_ubatch"], r["type_k"]): r for r in doc["config_trade"]}
    assert rows[(ub, "f16")]["prompt_tokens_per_second"] > rows[(512, "f16")]["prompt_tokens_per_second"]
    assert any(w.startswith(f"-ub {ub}: prompt") for w in doc["config_why"])
    code, out, err = run(*base, "-ub", "512")
    assert code == 0, err
    assert "-ub 512 -b 2048" in out and "given on the command line, kept: n_ubatch" in out
    assert "Run configuration trade" in out


def test_batch_workload_launches_its_slots(model_path: Callable[[str], Path]) -> None:
    code, out, err = run("solve", str(model_path("qwen3-30b-a3b")), "--vram", "12G", "--ram", "32G", "--ram-bw", "80",
                         "--workload", "batch", "-ub", "512", "--no-scripts")
    assert code == 0, err
    assert "decode batch 8" in out and " -np 8 -kvu " in out


def test_depth_times_decode_where_the_workload_is(model_path: Callable[[str], Path]) -> None:
    base = ["solve", str(model_path("qwen3-30b-a3b")), "--vram", "12G", "--ram", "32G", "-c", "32768",
            "--no-scripts", "--json", "-ub", "512", "-b", "2048", "-ctk", "f16", "-ctv", "f16"]
    docs = {}
    for d in (None, 0, 16000):
        code, out, err = run(*base, *([] if d is None else ["-d", str(d)]))
        assert code == 0, err
        docs[d] = json.loads(out)["prediction"]
    assert docs[0]["workload"]["depth"] == 0 and docs[None]["workload"]["depth"] is None
    tps = {d: doc["plan"]["decode_tokens_per_second"] for d, doc in docs.items()}
    assert tps[0] > tps[16000] > tps[None]  # KV read per token grows with the depth; None is the full 32768
    assert docs[16000]["plan"]["prompt_tokens_per_second"] < docs[0]["plan"]["prompt_tokens_per_second"]


def test_ram_avail_is_a_hardware_option_of_solve(model_path: Callable[[str], Path]) -> None:
    """The note that assumes RAM available names --ram-avail: solve takes it too, and too little RAM available
    for the host's share of the weights slows decode (they are read from disk again)."""
    base = ["solve", str(model_path("qwen3-30b-a3b")), "--vram", "12G", "--ram", "32G", "--ram-bw", "ddr5-6000x2",
            "-c", "8192", "--no-scripts", "--json", "-ub", "512", "-b", "2048", "-ctk", "f16", "-ctv", "f16"]
    tps = {}
    for avail in ("30G", "4G"):
        code, out, err = run(*base, "--ram-avail", avail)
        assert code == 0, err
        assert "give --ram-avail" not in err
        tps[avail] = json.loads(out)["prediction"]["plan"]["decode_tokens_per_second"]
    assert tps["4G"] < tps["30G"]


def test_link_per_gpu(model_path: Callable[[str], Path]) -> None:
    """--link (alias --pcie) takes one link for all GPUs or one per GPU, as estimate does. Prompts copy host
    experts to the first GPU (op offload), so a narrow first link slows the --cpu-moe baseline's prompts, and on
    one 12 GB card (experts in RAM) the plan's; a list of the wrong length is refused."""
    base = ["solve", str(model_path("qwen3-30b-a3b")), "--ram", "64G", "--ram-bw", "ddr5-6000x2", "-c", "8192",
            "-ub", "512", "--no-scripts", "--json"]

    def predicted(*args: str) -> dict:
        code, out, err = run(*base, *args)
        assert code == 0, err
        return json.loads(out)["prediction"]

    wide, narrow = (predicted("--gpu", "rtx3060", "--link", link)["plan"] for link in ("pcie4x16", "pcie3x1"))
    assert narrow["prompt_tokens_per_second"] < wide["prompt_tokens_per_second"] / 2
    two = [{b["name"]: b for b in predicted("--gpu", "rtx3060,rtx3060", "--pcie", links)["baselines"]}["--cpu-moe"]
           for links in ("pcie4x16,pcie4x16", "pcie3x1,pcie4x16")]
    assert two[1]["prompt_tokens_per_second"] < two[0]["prompt_tokens_per_second"] / 2
    code, _, err = run(*base, "--gpu", "rtx3060,rtx3060", "--link", "pcie4x16,pcie4x16,pcie4x16")
    assert code == 2 and "--link has 3 entries for 2 GPUs" in err
    code, _, err = run(*base, "--gpu", "rtx3060", "--link=")
    assert code == 2 and err.count("\n") == 1 and "--link is empty" in err


def test_host_cpu_options_are_hardware_options_of_solve(model_path: Callable[[str], Path]) -> None:
    """--cores, --numa-nodes and --cpu-class describe a host that is not this machine, for solve as for estimate,
    and solve's -t is the thread count its speed model uses: CPU-only, a host of AVX2 cores prompts slower than
    one of AVX-512 VNNI cores, and one thread decodes slower than sixteen."""
    base = ["solve", str(model_path("qwen3-30b-a3b")), "--gpu", "none", "--ram", "64G", "--ram-bw", "ddr5-6000x12",
            "--cores", "16", "--numa-nodes", "1", "-c", "8192", "--no-scripts", "--json"]

    def plan(*args: str) -> dict:
        code, out, err = run(*base, *args)
        assert code == 0, err
        return json.loads(out)["prediction"]["plan"]

    vnni, avx2 = (plan("-t", "16", "--cpu-class", c) for c in ("avx512-vnni", "avx2"))
    assert avx2["prompt_tokens_per_second"] < vnni["prompt_tokens_per_second"] * 0.9
    assert plan("-t", "1", "--cpu-class", "avx2")["decode_tokens_per_second"] < avx2["decode_tokens_per_second"]
    code, _, err = run(*base, "--cpu-class", "sse2")
    assert code == 2 and "sse2" in err


def test_the_readme_session_is_what_solve_prints(model_path: Callable[[str], Path]) -> None:
    """README.md's session with hardware given by flags shows this build's predictions: its placement and run
    configuration tables are printed verbatim (they went stale once, when the speed model changed under them)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    prompt = ("$ moeplace solve examples/models/qwen3-30b-a3b.gguf --gpu rtx3060 --ram 32G --ram-bw ddr5-6000x2 "
              "-c 32768\n")
    shown = readme[readme.index(prompt) + len(prompt):]
    shown = shown[:shown.index("```")].splitlines()
    args = prompt.split()[3:]
    code, out, err = run("solve", str(model_path("qwen3-30b-a3b")), *args[1:], "--no-scripts")
    assert code == 0, err
    printed = out.splitlines()

    def table(lines: list[str], header: str) -> list[str]:
        start = next(i for i, x in enumerate(lines) if x.startswith(header))
        end = next(i for i in range(start, len(lines)) if not lines[i].strip() or lines[i].startswith("("))
        return lines[start:end]

    for header in ("placement ", " -ub "):
        assert table(shown, header) == table(printed, header)
