"""A pasted llama.cpp command line (``llama-server``, ``llama-cli``, ``llama-bench``, ik_llama.cpp's builds) read
the way llama.cpp's own argument parsers read it, into the settings that decide placement and speed.

What it follows (``common/arg.cpp`` for the server and CLI tools, ``tools/llama-bench/llama-bench.cpp`` for
llama-bench):

* ``-ot``/``--override-tensor``, ``--cpu-moe`` and ``--n-cpu-moe N`` append to **one** override list in
  command-line order (``-ot`` values split on every ``,``); the first matching item wins later, so an ``-ot``
  before ``--cpu-moe`` takes precedence (:mod:`moeplace.llamacpp` applies the list).
* llama-bench takes lists for most values (``-p 512,1024``, ``-ngl 10-20+5``) and runs one test per
  combination; a pasted llama-bench line must name one configuration (a list is refused, naming the flag,
  except ``-p``, ``-n`` and ``-d``, where the first value is taken and the others noted). Its ``-ot`` separates
  items with ``;`` (``,`` separates combinations) and its ``--n-cpu-moe`` items come after its ``-ot`` items;
  its booleans take ``0|1`` (``-nkvo 1``, ``-mmp 0``, ``-fa 1``) and long options may use ``_`` for ``-``.
* flags that do not change where tensors live or how fast they run (sampling, server, logging) are read and
  ignored; a flag this table does not know, a missing or malformed value, or a stray word is an error naming it.

The parser is pure: it returns a :class:`LlamaCommand` and never reads the model file.
"""

from __future__ import annotations

import math
import os
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from moeplace.errors import MoeplaceError
from moeplace.memory import CACHE_TYPES
from moeplace.targets.llamacpp_rules import Override, cpu_moe_pattern, cpu_moe_patterns, parse_override_arg

# --n-cpu-moe N writes N patterns; past the last block they match nothing, so N is clamped to more blocks than any
# model has (DeepSeek-V3 has 61) rather than writing billions of them.
MAX_BLOCKS = 4096


class CommandLineError(MoeplaceError):
    """A pasted llama.cpp command line moeplace cannot read (an unknown flag, a missing or malformed value)."""


@dataclass(frozen=True)
class LlamaCommand:
    """What a llama.cpp command line says about placement and speed; None where it says nothing (llama.cpp's
    default then applies)."""

    program: str  # basename of the executable ("llama-server", "llama-bench", ...), "" when not given
    bench: bool  # parsed with llama-bench's rules
    model: str | None = None
    n_gpu_layers: int | None = None  # -1: all ("all", "999" stays 999: llama.cpp clamps it)
    overrides: tuple[Override, ...] = ()  # -ot / --cpu-moe / --n-cpu-moe, in llama.cpp's order
    tensor_split: tuple[float, ...] | None = None
    n_ctx: int | None = None
    n_batch: int | None = None
    n_ubatch: int | None = None
    type_k: str | None = None
    type_v: str | None = None
    flash_attn: str | None = None  # on / off / auto
    n_seq_max: int | None = None
    kv_unified: bool = False
    swa_full: bool = False
    no_kv_offload: bool = False
    no_op_offload: bool = False
    threads: int | None = None
    mmap: bool | None = None
    mlock: bool = False
    numa: str | None = None
    n_prompt: int | None = None  # llama-bench -p
    n_gen: int | None = None  # llama-bench -n / llama-cli -n
    depth: int | None = None  # llama-bench -d
    fit: str | None = None  # --fit on|off
    notes: tuple[str, ...] = field(default=())  # what was read but not used, said once each


# Flags that take no value / one value and do not change placement or speed (common/arg.cpp, llama-bench.cpp,
# ik_llama.cpp's additions), as whitespace-separated words.
def _flags(words: str) -> frozenset[str]:
    return frozenset(words.split())


_IGNORED_NOVALUE = _flags("""
--jinja --no-jinja -cb --cont-batching -nocb --no-cont-batching --metrics --slots --no-slots --props
--no-webui --webui --embedding --embeddings --reranking --rerank -v --verbose --log-disable --log-colors
--log-prefix --log-timestamps --no-warmup --warmup --check-tensors --no-context-shift --context-shift
-e --escape --no-escape --special -sp --verbose-prompt -cnv --conversation -no-cnv --no-conversation -i
--interactive -if --interactive-first -st --single-turn --ignore-eos --no-display-prompt --simple-io
--no-perf --perf --mmproj-offload --no-mmproj --no-mmproj-offload --no-mmproj-auto --offline --progress
-fmoe --fused-moe -rtr --run-time-repack -ger --grouped-expert-routing --no-host -kvu-off --cache-prompt
--no-cache-prompt --spm-infill --multiline-input -mli --color --no-kv-unified --direct-io -dio --no-direct-io
-ndio --repack --no-repack -nr --prio-batch --cpu-strict-batch --list-devices --cache-ram-off
--no-prefill-assistant
""")
_IGNORED_VALUE = _flags("""
--host --port --path --api-prefix --api-key --api-key-file --ssl-key-file --ssl-cert-file -to --timeout
--threads-http --alias -a --chat-template --chat-template-file --chat-template-kwargs --reasoning-format
--reasoning-budget --temp --top-k --top-p --min-p --typical --repeat-penalty --repeat-last-n
--presence-penalty --frequency-penalty --dry-multiplier --dry-base --dry-allowed-length --dry-penalty-last-n
--dry-sequence-breaker --mirostat --mirostat-lr --mirostat-ent --xtc-probability --xtc-threshold --top-nsigma
--samplers --sampling-seq --logit-bias -l -s --seed --grammar --grammar-file --json-schema -j
--json-schema-file -sys --system-prompt -sysf --system-prompt-file -r --reverse-prompt --in-prefix
--in-suffix -p --prompt -f --file -bf --binary-file --keep --log-file -lv --verbosity --log-verbosity
-hf -hfr --hf-repo -hff --hf-file -hft --hf-token -hfv --hf-repo-v -hffv --hf-file-v -mu --model-url
-mm --mmproj -mmu --mmproj-url --lora --lora-scaled --control-vector --rope-scaling --rope-scale
--rope-freq-base --rope-freq-scale --yarn-orig-ctx --yarn-ext-factor --yarn-attn-factor --yarn-beta-slow
--yarn-beta-fast -dt --defrag-thold --cache-reuse --slot-save-path --slot-prompt-similarity -sps
-ctxcp --ctx-checkpoints --swa-checkpoints -cram --cache-ram --pooling --attention --override-kv
-tb --threads-batch -C --cpu-mask -Cr --cpu-range --cpu-strict --prio --poll -Cb --cpu-mask-batch
-Crb --cpu-range-batch --poll-batch -mg --main-gpu -dev --device --rpc -rpc -md
--model-draft -ngld --gpu-layers-draft --n-gpu-layers-draft -devd --device-draft --draft-max --draft
--draft-n --draft-min --draft-n-min --draft-p-min -cd --ctx-size-draft -ctkd -ctvd --cache-type-k-draft
--cache-type-v-draft -otd --override-tensor-draft -ncmoed --n-cpu-moe-draft --spec-replace -mla --mla-use
-amb --attention-max-batch -ser --smart-expert-reduction -fitt --fit-target -fitc --fit-ctx --media-path
--tools -r --repetitions --delay -o --output -oe --output-err -pg --image --audio --model-alias -ncd
--n-predict-draft --reasoning-budget-message --chat-template-kwargs --webui-config --webui-config-file
-gr --group-size -ngram --lookup-cache-static --lookup-cache-dynamic -lcs -lcd --cache-type-k-draft
-embd --embd-normalize --embd-output-format --embd-separator --cls-separator -lm --load-mode -nopo-draft
""")

# ik_llama.cpp's own flags among the ones read and ignored: they change its work and kernels (fused MoE, run-time
# repacking, MLA mode, attention batch, expert reduction, offload policy), which an estimate of mainline llama.cpp
# does not model, so the note says so instead of calling them without effect.
_IK_ONLY = frozenset({"-fmoe", "--fused-moe", "-rtr", "--run-time-repack", "-ger", "--grouped-expert-routing",
                      "-mla", "--mla-use", "-amb", "--attention-max-batch", "-ser", "--smart-expert-reduction"})

_PROGRAMS = re.compile(r"^(llama-(server|cli|bench|mtmd-cli|run|simple|perplexity|batched-bench)|main|server|"
                       r"llama-sweep-bench)(\.exe)?$")
_BOOL_TRUE = {"1", "true", "on", "yes", "enabled"}
_BOOL_FALSE = {"0", "false", "off", "no", "disabled"}


def _int(flag: str, value: str, *, allow_negative: bool = False) -> int:
    try:
        n = int(value)
    except ValueError:
        raise CommandLineError(f"{flag} '{value}' is not a whole number") from None
    if n < 0 and not allow_negative:
        raise CommandLineError(f"{flag} {n}: must not be negative")
    return n


def _bench_single(flag: str, value: str, notes: list[str], take_first: bool = False) -> str:
    """llama-bench lists (``a,b``, ranges ``1-5+1``): one configuration only."""
    parts = value.split(",")
    if len(parts) == 1 and not re.fullmatch(r"-?\d+-\d+.*", value):
        return value
    if take_first and re.fullmatch(r"\d+(,\d+)*", value):
        notes.append(f"{flag} {value} lists several tests: estimating the first, {parts[0]}")
        return parts[0]
    raise CommandLineError(f"{flag} '{value}' lists several llama-bench configurations: paste one value")


def _bool01(flag: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _BOOL_TRUE:
        return True
    if v in _BOOL_FALSE:
        return False
    raise CommandLineError(f"{flag} '{value}' must be 0 or 1")


def split_ts(flag: str, value: str) -> tuple[float, ...]:
    """``-ts 3,1`` (or ``3/1``, llama-bench's ``3;1``): finite non-negative proportions, not all zero."""
    try:
        out = tuple(float(x) for x in re.split(r"[,/;]", value) if x.strip())
    except ValueError:
        raise CommandLineError(f"{flag} '{value}' must be proportions like 3,1") from None
    if not out or any(not math.isfinite(x) or x < 0 for x in out) or not any(x > 0 for x in out):
        raise CommandLineError(f"{flag} '{value}' must be non-negative proportions, at least one above zero, like 3,1")
    return out


def _cache_type(flag: str, value: str) -> str:
    v = value.lower()
    if v not in CACHE_TYPES:
        raise CommandLineError(f"{flag} '{value}' is not a cache type: use one of {', '.join(CACHE_TYPES)}")
    return v


def _flash(flag: str, value: str | None) -> str:
    if value is None:
        return "on"  # older builds and ik_llama.cpp: -fa is a bare switch
    v = value.lower()
    if v in _BOOL_TRUE:
        return "on"
    if v in _BOOL_FALSE:
        return "off"
    if v == "auto":
        return "auto"
    raise CommandLineError(f"{flag} '{value}' must be on, off or auto")


# Flags that take one value and set one field: flag -> (LlamaCommand field, converter, whether llama-bench takes a
# comma list of test values there, of which moeplace reads exactly one).
_VALUE_FLAGS: dict[str, tuple[str, Callable[[str, str], object], bool]] = {
    flag: spec for flags, spec in (
        (("-m", "--model"), ("model", lambda _flag, x: x, False)),
        (("-c", "--ctx-size"), ("n_ctx", _int, False)),
        (("-np", "--parallel"), ("n_seq_max", _int, False)),
        (("-b", "--batch-size"), ("n_batch", _int, True)),
        (("-ub", "--ubatch-size"), ("n_ubatch", _int, True)),
        (("-ctk", "--cache-type-k"), ("type_k", _cache_type, True)),
        (("-ctv", "--cache-type-v"), ("type_v", _cache_type, True)),
        (("-ts", "--tensor-split"), ("tensor_split", split_ts, True)),
        (("-t", "--threads"), ("threads", _int, True)),
    ) for flag in flags
}


def looks_like_command(word: str) -> bool:
    """Whether a word starts a llama.cpp command line (an environment assignment or a llama.cpp program) rather
    than naming a model."""
    return bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", word) or _PROGRAMS.match(os.path.basename(word)))


def _skip_prefix(tokens: list[str]) -> tuple[str, list[str]]:
    """Drops environment assignments (``CUDA_VISIBLE_DEVICES=0``) and wrappers (``numactl ... --``, ``taskset``)
    before the llama.cpp executable; returns its basename and the arguments after it."""
    i = 0
    while i < len(tokens) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[i]):
        i += 1
    rest = tokens[i:]
    for j, t in enumerate(rest):
        name = os.path.basename(t)
        if _PROGRAMS.match(name):
            return re.sub(r"\.exe$", "", name), rest[j + 1:]
    if rest and not rest[0].startswith("-"):
        raise CommandLineError(f"'{rest[0]}' is not a llama.cpp program: paste a line that runs llama-server, "
                               "llama-cli or llama-bench")
    return "", rest


def parse_command(command: str | Sequence[str]) -> LlamaCommand:
    """Reads a llama.cpp command line (a string as a shell would split it, or its words) into a
    :class:`LlamaCommand`. Raises :class:`CommandLineError` naming the first flag it cannot read."""
    if isinstance(command, str):
        try:
            tokens = shlex.split(command.replace("\\\n", " "))
        except ValueError as e:
            raise CommandLineError(f"cannot split the command line: {e}") from None
    else:
        tokens = list(command)
    program, args = _skip_prefix(tokens)
    bench = program in ("llama-bench", "llama-sweep-bench")
    v: dict[str, object] = {}
    overrides: list[Override] = []
    n_cpu_moe_bench: list[Override] = []
    notes: list[str] = []
    ignored: list[str] = []
    bench_ot_seen = False  # llama-bench makes every further -ot another test configuration
    i = 0

    def value(flag: str) -> str:
        nonlocal i
        if i + 1 >= len(args) or (args[i + 1].startswith("-") and not re.fullmatch(r"-\d+", args[i + 1])):
            raise CommandLineError(f"{flag} needs a value")
        i += 1
        return args[i]

    while i < len(args):
        raw = args[i]
        flag = raw.replace("_", "-") if bench and raw.startswith("--") else raw
        if not flag.startswith("-") or flag == "-":
            raise CommandLineError(f"unexpected word '{raw}' in the llama.cpp command: every value must follow "
                                   "its flag")
        spec = _VALUE_FLAGS.get(flag)
        if spec is not None:
            key, convert, per_test = spec
            x = value(flag)
            v[key] = convert(flag, _bench_single(flag, x, notes) if bench and per_test else x)
        elif flag in ("-ngl", "--gpu-layers", "--n-gpu-layers"):
            x = value(flag)
            x = _bench_single(flag, x, notes) if bench else x
            v["n_gpu_layers"] = -1 if x in ("all", "auto") else _int(flag, x, allow_negative=True)
            if x == "auto":
                notes.append(f"{flag} auto: taken as all layers (llama.cpp's --fit then moves what does not fit)")
        elif flag in ("-ot", "--override-tensor"):
            x = value(flag)
            if bench:
                if "," in x or bench_ot_seen:
                    raise CommandLineError(f"{flag} '{x}' adds another llama-bench configuration (',' or a repeated "
                                           f"{flag} separates them; ';' separates the items of one): paste one")
                overrides.extend(o for item in x.split(";") if item for o in parse_override_arg(item))
                bench_ot_seen = True
            else:
                overrides.extend(parse_override_arg(x))
        elif flag in ("-cmoe", "--cpu-moe") and not bench:
            overrides.append(cpu_moe_pattern())
        elif flag in ("-ncmoe", "--n-cpu-moe"):
            x = value(flag)
            n = _int(flag, _bench_single(flag, x, notes) if bench else x)
            (n_cpu_moe_bench if bench else overrides).extend(cpu_moe_patterns(min(n, MAX_BLOCKS)))
        elif flag in ("-fa", "--flash-attn"):
            nxt = args[i + 1] if i + 1 < len(args) else None
            if nxt is not None and nxt.lower() in (*_BOOL_TRUE, *_BOOL_FALSE, "auto"):
                i += 1
                v["flash_attn"] = _flash(flag, _bench_single(flag, nxt, notes) if bench else nxt)
            else:
                v["flash_attn"] = _flash(flag, None)
        elif flag in ("-kvu", "--kv-unified"):
            v["kv_unified"] = True
        elif flag == "--swa-full":
            v["swa_full"] = True
        elif flag in ("-nkvo", "--no-kv-offload"):
            v["no_kv_offload"] = _bool01(flag, _bench_single(flag, value(flag), notes)) if bench else True
        elif flag in ("-nopo", "--no-op-offload"):
            v["no_op_offload"] = _bool01(flag, _bench_single(flag, value(flag), notes)) if bench else True
        elif flag == "--no-mmap":
            v["mmap"] = False
        elif flag in ("-mmp", "--mmap"):
            v["mmap"] = _bool01(flag, _bench_single(flag, value(flag), notes)) if bench else True
        elif flag == "--mlock":
            v["mlock"] = True
        elif flag == "--numa":
            x = value(flag)
            if x not in ("distribute", "isolate", "numactl"):
                raise CommandLineError(f"--numa '{x}' must be distribute, isolate or numactl")
            v["numa"] = x
        elif flag in ("-p", "--n-prompt") and bench:
            v["n_prompt"] = _int(flag, _bench_single(flag, value(flag), notes, take_first=True))
        elif flag in ("-n", "--n-gen", "--n-predict", "-N"):
            v["n_gen"] = _int(flag, _bench_single(flag, value(flag), notes, take_first=True) if bench
                              else value(flag), allow_negative=not bench)
        elif flag in ("-d", "--n-depth") and bench:
            v["depth"] = _int(flag, _bench_single(flag, value(flag), notes, take_first=True))
        elif flag == "--fit":
            nxt = args[i + 1] if i + 1 < len(args) else None
            if nxt in ("on", "off"):
                i += 1
                v["fit"] = nxt
            else:
                v["fit"] = "on"
        elif flag in _IGNORED_NOVALUE:
            ignored.append(flag)
        elif flag in ("-sm", "--split-mode"):
            x = value(flag)
            if x != "layer":
                notes.append(f"{flag} {x}: estimated as llama.cpp's default layer split")
        elif flag in _IGNORED_VALUE:
            value(flag)
            ignored.append(flag)
        else:
            where = "llama-bench" if bench else (program or "llama.cpp")
            raise CommandLineError(f"unknown {where} flag '{raw}': moeplace does not know what it does to placement"
                                   " or speed; remove it from the pasted line")
        i += 1
    seen = list(dict.fromkeys(ignored))
    ik = [f for f in seen if f in _IK_ONLY]
    rest = [f for f in seen if f not in _IK_ONLY]
    if ik:
        notes.append(f"ik_llama.cpp flags {' '.join(ik)}: estimated as mainline llama.cpp, whose -ngl, prompt offload "
                     "and CPU kernels differ from ik_llama.cpp's; plan for it with solve --target ik_llama.cpp")
    if rest:
        notes.append("read and ignored (no effect on placement or speed): " + " ".join(rest))
    return LlamaCommand(program=program, bench=bench, overrides=(*overrides, *n_cpu_moe_bench),
                        notes=tuple(notes), **v)  # type: ignore[arg-type]
