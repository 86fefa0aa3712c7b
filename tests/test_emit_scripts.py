"""Launch scripts, the llama-swap entry and JSON (moeplace.emit.scripts): hostile paths and arguments stay literal.

The sh script is parsed with ``sh -n`` and executed with a fake ``llama-server`` on PATH that prints its argv
NUL-separated. PowerShell is not installed here, so its script is read back with a tokenizer written after
PowerShell's own rule for single-quoted strings. llama-swap's command splitting (github.com/billziss-gh/golib
shlex, POSIX and Windows dialects) is ported below from its Go source and checked against the emitted cmd."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moeplace import llamacpp as L
from moeplace.emit import LlamaArgs, RunSettings, SettingsError, build_args
from moeplace.emit import scripts as S
from moeplace.model import ModelDescription, Role, load_model
from moeplace.placement import HOST, Placement

HOSTILE = [
    "/models/plain.gguf",
    "/models/with space/m.gguf",
    "/models/it's a \"quote\".gguf",
    "/models/$(touch pwned)/`touch pwned2`/m.gguf",
    "/models/${HOME}/${PORT}/${env.HOME}/$HOME/m.gguf",
    "/models/new\nline/tab\there.gguf",
    "C:\\Models\\My Models\\\\m.gguf\\",
    "-m.gguf",
    "/models/glob*?[a].gguf",
    "/models/semi;colon|pipe&amp>redir<in.gguf",
    "/models/unicode é ü 模型 ‘smart’ ’quotes’ ‚low‛.gguf",
    "/models/#hash !bang ~tilde %pct.gguf",
    "'",
    "\\",
    "\"\\\"",
    "",
]
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=40)
LINE_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0\n\r"), max_size=40)


@pytest.fixture(scope="module")
def model(model_path: Callable[[str], Path]) -> ModelDescription:
    return load_model(model_path("gpt-oss-tiny"))


def args_for(m: ModelDescription, path: str, extra: tuple[str, ...] = ()) -> LlamaArgs:
    base = L.apply(m, -1, None, (), ["CUDA0"])
    moved = {t.name: HOST for t in m.tensors if t.loaded and t.role is Role.ROUTED_EXPERT and t.block == 1}
    plan = Placement(base.layer_devices, base.output_device, {**base.tensor_devices, **moved})
    return build_args(m, plan, RunSettings(path, 4096, ("CUDA0",), extra_args=extra))


@pytest.fixture(scope="module")
def fake_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with fake llama-server/llama-cli programs that print their arguments NUL-separated."""
    d = tmp_path_factory.mktemp("bin")
    for name in ("llama-server", "llama-cli", "my server"):
        p = d / name
        p.write_text("#!/bin/sh\nfor a in \"$@\"; do printf '%s\\0' \"$a\"; done\n")
        p.chmod(0o755)
    return d


SHELLS = [s for s in ("sh", "bash", "dash") if shutil.which(s)]


def run_sh(shell: str, script: Path, fake_bin: Path, *extra: str, env: dict[str, str] | None = None) -> list[str]:
    e = {"PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    out = subprocess.run([shell, str(script), *extra], env=e, capture_output=True, check=True, cwd=script.parent)
    assert not (script.parent / "pwned").exists() and not (script.parent / "pwned2").exists()
    parts = out.stdout.split(b"\0")
    assert parts[-1] == b""
    return [p.decode("utf-8") for p in parts[:-1]]


# --- POSIX sh ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", HOSTILE)
@pytest.mark.parametrize("shell", SHELLS)
def test_sh_script_passes_hostile_paths_literally(model: ModelDescription, fake_bin: Path, tmp_path: Path,
                                                  path: str, shell: str) -> None:
    args = args_for(model, path, extra=("--alias", path))
    script = S.write_text(tmp_path / "run.sh", S.sh_script(args, port=9000, model_name=path), executable=True)
    subprocess.run([shell, "-n", str(script)], check=True)
    got = run_sh(shell, script, fake_bin, "--verbose", path)
    assert got == [*args.argv, "--host", "127.0.0.1", "--port", "9000", "--verbose", path]


def test_sh_script_for_llama_cli_and_program_override(model: ModelDescription, fake_bin: Path,
                                                      tmp_path: Path) -> None:
    args = args_for(model, "/m.gguf")
    script = S.write_text(tmp_path / "cli.sh", S.sh_script(args, program="llama-cli", server=False))
    assert run_sh("sh", script, fake_bin) == list(args.argv)  # no --host/--port for llama-cli
    server = S.write_text(tmp_path / "srv.sh", S.sh_script(args, program=str(fake_bin / "my server")))
    assert run_sh("sh", server, fake_bin)[-2:] == ["--port", "8080"]
    # $LLAMA_SERVER names another binary without editing the script
    assert run_sh("sh", server, fake_bin, env={"LLAMA_SERVER": "llama-cli"})[-1] == "8080"
    with pytest.raises(subprocess.CalledProcessError):
        run_sh("sh", server, fake_bin, env={"LLAMA_SERVER": str(tmp_path / "missing")})


@given(path=TEXT)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_sh_script_round_trips_any_text(model: ModelDescription, fake_bin: Path,
                                        tmp_path_factory: pytest.TempPathFactory, path: str) -> None:
    args = args_for(model, path)
    script = S.write_text(tmp_path_factory.mktemp("s") / "run.sh", S.sh_script(args))
    assert run_sh("sh", script, fake_bin)[: len(args.argv)] == list(args.argv)


def test_sh_script_header_cannot_break_out(model: ModelDescription) -> None:
    args = args_for(model, "/m.gguf")
    text = S.sh_script(args, model_name="x\n$(touch pwned)\u2028y")
    assert all(line.startswith("#") for line in text.splitlines()[1:3])


# --- PowerShell ------------------------------------------------------------------------------------------------

PS_SINGLE_QUOTES = "'\u2018\u2019\u201a\u201b"


def ps_read_strings(text: str) -> list[str]:
    """The single-quoted string literals in ``text`` in order, decoded like PowerShell's tokenizer does: a
    quote character followed by another ends up as the second one, a lone one ends the string."""
    out, i = [], 0
    while i < len(text):
        if text[i] in PS_SINGLE_QUOTES:
            i += 1
            buf = []
            while True:
                c = text[i]
                if c in PS_SINGLE_QUOTES:
                    if i + 1 < len(text) and text[i + 1] in PS_SINGLE_QUOTES:
                        buf.append(text[i + 1])
                        i += 2
                        continue
                    i += 1
                    break
                buf.append(c)
                i += 1
            out.append("".join(buf))
        else:
            assert text[i] in " ,\n", f"unexpected {text[i]!r} outside a string literal"
            i += 1
    return out


@pytest.mark.parametrize("path", HOSTILE)
def test_powershell_script_arguments_are_literal(model: ModelDescription, path: str) -> None:
    args = args_for(model, path)
    text = S.powershell_script(args, port=9001, program=path or "llama-server", model_name=path)
    lines = text.splitlines()
    assert lines[0].startswith("#") and lines[1].startswith("#")
    start, end = lines.index("$Arguments = @("), lines.index(")")
    body = "\n".join(lines[start + 1:end])
    assert ps_read_strings(body) == [*args.argv, "--host", "127.0.0.1", "--port", "9001"]
    program = text.split("} else { ", 1)[1].split(" }\n$Arguments = @(", 1)[0]
    assert ps_read_strings(program) == [path or "llama-server"]
    assert lines[-2:] == ["& $Program @Arguments @args", "exit $LASTEXITCODE"]


@given(TEXT)
def test_ps_quote_round_trips(text: str) -> None:
    assert ps_read_strings(S.ps_quote(text)) == [text]


# --- llama-swap ------------------------------------------------------------------------------------------------
# Port of github.com/billziss-gh/golib/shlex (shlex.go), the splitter llama-swap's SanitizeCommand uses.

_EMPTY, _NOESC = object(), object()


def _posix_escape(s: str, r: str, r0: object) -> object:
    if r != "\\":
        return _NOESC
    if s in (" ", "A"):
        return _EMPTY if r0 in ("\n", _EMPTY) else r0
    if s == '"':
        if r0 in ("\n", _EMPTY):
            return _EMPTY
        return r0 if r0 in ("$", "`", '"', "\\") else _NOESC
    return _NOESC


def _win_escape(s: str, r: str, r0: object) -> object:
    if s in (" ", "A"):
        return r0 if r == "\\" and r0 == '"' else _NOESC
    if s == '"':
        return r0 if r in ("\\", '"') and r0 == '"' else _NOESC
    return _NOESC


def _win_long_escape(r: str, line: str) -> tuple[str, str, str | None] | None:
    if r != "\\":
        return None
    n = 0
    while True:
        c = line[n] if n < len(line) else None
        n += 1
        if c is None or c != "\\":
            break
    if n < 2:
        return None
    if c != '"':
        return "\\" * (n - 1), line[n - 1:], c
    if n % 2 == 0:
        return "\\" * (n // 2 - 1), line[n - 1:], '"'
    return "\\" * (n // 2 - 1), line[n - 2:], "\\"


def golib_split(text: str, windows: bool) -> list[str]:
    is_space = (lambda c: c in " \t\r\n") if windows else (lambda c: c in " \t\n")
    is_quote = (lambda c: c == '"') if windows else (lambda c: c in "\"'")
    escape = _win_escape if windows else _posix_escape
    tokens: list[str] = []
    token: list[str] | None = None
    state = [" "]
    line = text
    r: str | None = line[0] if line else None
    while r is not None:
        line = line[1:]
        r0: str | None = line[0] if line else None
        s = state[-1]
        e = escape(s, r, r0 if r0 is not None else _EMPTY)
        if e is not _NOESC:
            if r0 is not None:
                line = line[1:]
                r0 = line[0] if line else None
            if e is _EMPTY:
                r = r0
                continue
        if s == " ":
            if e is not _NOESC:
                state.append("A")
                token = [*(token or []), str(e)]
            elif is_quote(r):
                state += ["A", r]
                token = []
            elif not is_space(r):
                state.append("A")
                token = [*(token or []), r]
        elif s == "A":
            assert token is not None
            if e is not _NOESC:
                token.append(str(e))
            elif is_quote(r):
                state.append(r)
            elif is_space(r):
                state.pop()
                tokens.append("".join(token))
                token = None
            else:
                token.append(r)
        else:
            assert token is not None
            if e is not _NOESC:
                token.append(str(e))
            elif s == r:
                state.pop()
            else:
                token.append(r)
        if e is _NOESC and windows:
            res = _win_long_escape(r, line)
            if res is not None:
                extra, line, r0 = res
                assert token is not None
                token.extend(extra)
        r = r0
    if token is not None:
        tokens.append("".join(token))
    return tokens


def test_golib_port_follows_the_go_rules() -> None:
    # The port was run against the 54 cases of golib's shlex_test.go (all agree); these cover the same rules:
    # POSIX quoting and backslash escapes, Windows 2n / 2n+1 backslashes before a quote and "" inside quotes.
    assert golib_split(r"""a 'b c' "d\"e" f\ g""", windows=False) == ["a", "b c", 'd"e', "f g"]
    assert golib_split(r'a "b c" d\\"e f"', windows=True) == ["a", "b c", "d\\e f"]
    assert golib_split(r'"a\"b" c\\\"d', windows=True) == ['a"b', 'c\\"d']
    assert golib_split('"a""b"', windows=True) == ['a"b']


@given(TEXT)
def test_posix_word_round_trips(text: str) -> None:
    word = S.posix_word(text)
    assert "${" not in word
    assert golib_split(word, windows=False) == [text]


@given(TEXT)
def test_windows_word_round_trips(text: str) -> None:
    word = S.windows_word(text)
    assert "${" not in word
    assert golib_split(word, windows=True) == [text]


MACRO = re.compile(r"\$\{([a-zA-Z0-9_-]+)\}")
ENV_MACRO = re.compile(r"\$\{env\.([a-zA-Z_][a-zA-Z0-9_]*)\}")


def llama_swap_argv(config_text: str, model_id: str, windows: bool) -> list[str]:
    """What llama-swap runs for ``model_id``: env macros on the raw text, YAML, macros, ${PORT}, comment lines
    dropped, then the shlex split (proxy/config/config.go, LoadConfigFromReader and SanitizeCommand)."""
    yaml = pytest.importorskip("yaml")
    assert not ENV_MACRO.search(config_text)
    cmd = yaml.safe_load(config_text)["models"][model_id]["cmd"]
    assert [m.group(1) for m in MACRO.finditer(cmd)] == ["PORT"]
    cmd = cmd.replace("${PORT}", "5800")
    assert "\n" not in cmd
    return golib_split(cmd, windows=windows)


@pytest.mark.parametrize("platform", ["posix", "windows"])
@pytest.mark.parametrize("path", [p for p in HOSTILE if "\n" not in p])
def test_llama_swap_entry_round_trips(model: ModelDescription, platform: str, path: str) -> None:
    args = args_for(model, path)
    text = S.llama_swap_entry(args, "gpt-oss-tiny-moeplace", program=path or "llama-server", platform=platform,
                              ttl=300, model_name=path)
    got = llama_swap_argv(text, "gpt-oss-tiny-moeplace", windows=platform == "windows")
    assert got == [path or "llama-server", "--port", "5800", *args.argv]
    assert "    ttl: 300" in text.splitlines()


@given(path=LINE_TEXT, windows=st.booleans())
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_llama_swap_entry_round_trips_any_text(model: ModelDescription, path: str, windows: bool) -> None:
    args = args_for(model, path)
    text = S.llama_swap_entry(args, "m", platform="windows" if windows else "posix")
    assert llama_swap_argv(text, "m", windows)[3:] == list(args.argv)


def test_llama_swap_refusals(model: ModelDescription) -> None:
    args = args_for(model, "/a\nb.gguf")
    with pytest.raises(SettingsError, match="line break"):
        S.llama_swap_entry(args, "m")
    ok = args_for(model, "/m.gguf")
    for bad in ("", "a b", "${env.X}", "x" * 200, "-lead"):
        with pytest.raises(SettingsError, match="model id"):
            S.llama_swap_entry(ok, bad)
    with pytest.raises(SettingsError, match="platform"):
        S.llama_swap_entry(ok, "m", platform="dos")


def test_model_id_for_is_safe(model: ModelDescription) -> None:
    mid = S.model_id_for(model)
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:+-]*", mid) and mid.endswith("-moeplace")


@given(TEXT)
def test_yaml_double_quoted_round_trips(text: str) -> None:
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load("k: " + S.yaml_double_quoted(text))["k"] == text


# --- JSON ------------------------------------------------------------------------------------------------------


def test_plan_document(model: ModelDescription, tmp_path: Path) -> None:
    args = args_for(model, "/models/é $(x).gguf")
    plan = L.apply(model, args.expression.ngl, args.expression.tensor_split, args.expression.overrides, ["CUDA0"])
    doc = S.plan_document(model, plan, args, extra={"decode_tps": 41.5})
    back = json.loads(S.write_text(tmp_path / "plan.json", S.plan_json(doc)).read_text(encoding="utf-8"))
    assert back["schema"] == S.SCHEMA and back["llama_cpp"]["argv"] == list(args.argv)
    assert back["placement"]["tensors"] == dict(plan.tensor_devices)
    assert back["settings"]["model_path"] == "/models/é $(x).gguf"
    assert back["prediction"] == {"decode_tps": 41.5}
    assert sum(back["weight_bytes"].values()) == sum(t.nbytes for t in model.tensors if t.loaded)
    assert back["model"]["fingerprint"] == model.fingerprint()
