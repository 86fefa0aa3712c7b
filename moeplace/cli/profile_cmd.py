"""``moeplace profile``: measure, import, inspect, merge, export and draw routing profiles."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from moeplace.cli import INT32_MAX, friendly_errors, table
from moeplace.errors import MoeplaceError
from moeplace.infiles import check_regular
from moeplace.model import load_model
from moeplace.outfiles import encode_text, write_file
from moeplace.routing import (
    DEFAULT_BATCHES,
    RoutingProfile,
    SkewReport,
    check_profile,
    hot_experts,
    merge_profiles,
    skew_report,
)
from moeplace.routing_file import default_profile_path, dumps, load_profile, save_profile


class _RunByDefault(click.Group):
    """``moeplace profile MODEL --prompts P`` means ``moeplace profile run MODEL --prompts P``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_RunByDefault)
def profile() -> None:
    """How often each expert is routed to: measure it, import it, look at it.

    \b
      moeplace profile model.gguf --prompts p.txt    run prompts through llama.cpp (same as 'profile run')
      moeplace profile import imatrix.gguf --model model.gguf
      moeplace profile show profiles/model-live.json
      moeplace profile plot profiles/model-live.json -o heat.svg
    """


def _echo_lines(lines: list[str]) -> None:
    for line in lines:
        click.echo(line)


def _source_line(p: RoutingProfile) -> str:
    s = p.source
    parts = [f"{s.kind} profile, {s.tokens:,.0f} tokens"]
    if s.prompts:
        gen = f", {s.generated_per_prompt} generated per prompt" if s.generated_per_prompt else ""
        parts.append(f"{s.prompt_count} prompts from {s.prompts}{gen}")
    if s.file:
        parts.append(f"from {s.file}")
    if s.datasets:
        parts.append(f"datasets {', '.join(s.datasets)}")
    if s.merged_from:
        parts.append(f"merged from {len(s.merged_from)} profiles")
    if s.engine:
        parts.append(s.engine)
    if s.interrupted:
        parts.append("interrupted early")
    return "; ".join(parts)


def render_show(p: RoutingProfile, r: SkewReport) -> list[str]:
    """The human-readable skew report."""
    m = p.model
    out = [f"{m.name or m.arch} ({m.arch}, fingerprint {m.fingerprint})",
           f"  {_source_line(p)}",
           f"  {m.n_expert} experts, {m.n_expert_used} chosen per token, {len(p.layers)} MoE layers", ""]
    headers = ["layer", "tokens", f"top10%({r.n_top10})", f"top25%({r.n_top25})", "entropy", "dead",
               *[f"B={b}" for b in r.batches], "verdict"]
    rows = [["uniform", "", f"{r.uniform_top10:.1%}", f"{r.uniform_top25:.1%}", "1.000", "0",
             *[f"{d:.1f}" for d in r.uniform_distinct], ""]]
    for s in r.layers:
        rows.append([str(s.layer), f"{s.tokens:,.0f}", f"{s.top10_share:.1%}", f"{s.top25_share:.1%}",
                     f"{s.entropy:.3f}", str(s.dead), *[f"{d:.1f}" for d in s.distinct], s.verdict(r.uniform_top25)])
    out += ["  " + line for line in table(headers, rows, right=set(range(len(headers))))]
    out += ["", "  top10%/top25%: share of routes the hottest 10%/25% of experts take; entropy 1 = uniform;",
            "  B=n: expected distinct experts a batch of n tokens touches (what batched decode reads and prompt",
            "  processing copies across PCIe).", "", r.verdict()]
    for note in p.source.notes:
        out.append(f"note: {note}")
    return out


def show_json(p: RoutingProfile, r: SkewReport) -> dict[str, Any]:
    """The skew report as data."""
    uniform25 = r.uniform_top25
    return {
        "model": {"name": p.model.name, "arch": p.model.arch, "n_layer": p.model.n_layer,
                  "n_expert": p.model.n_expert, "n_expert_used": p.model.n_expert_used,
                  "fingerprint": p.model.fingerprint},
        "source": json.loads(dumps(p))["source"],
        "batches": list(r.batches),
        "uniform": {"top10_share": r.uniform_top10, "top25_share": uniform25,
                    "distinct": dict(zip(map(str, r.batches), r.uniform_distinct))},
        "layers": [{"layer": s.layer, "tokens": s.tokens, "top10_share": s.top10_share,
                    "top25_share": s.top25_share, "entropy": s.entropy, "dead": s.dead,
                    "distinct": dict(zip(map(str, r.batches), s.distinct)), "noise_top25": s.noise_top25,
                    "verdict": s.verdict(uniform25)} for s in r.layers],
        "near_uniform": r.near_uniform,
        "verdict": r.verdict(),
    }


def _save(p: RoutingProfile, out: Path | None, kind: str) -> Path:
    path = save_profile(p, out or default_profile_path(p.model, kind))
    click.echo(f"wrote {path}")
    return path


@profile.command()
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--prompts", "prompts_path", required=True, type=click.Path(path_type=Path),
              help="A text file (prompts separated by blank lines, or one per line), a .jsonl file, or a "
                   "directory of them.")
@click.option("--generate", type=click.IntRange(min=0, max=INT32_MAX), default=0, show_default=True,
              help="Tokens to generate (greedy) after each prompt: routing during generation differs.")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False),
              help="Profile file to write [default: profiles/<model>-live.json].")
@click.option("--ctx", "n_ctx", type=click.IntRange(min=8, max=INT32_MAX), default=2048, show_default=True,
              help="Context size; longer prompts are evaluated in pieces.")
@click.option("--batch", "n_batch", type=click.IntRange(min=1, max=INT32_MAX), default=512, show_default=True,
              help="Batch (and micro-batch) size.")
@click.option("--threads", type=click.IntRange(min=0, max=INT32_MAX), default=0, help="CPU threads [default: all].")
@click.option("--ngl", "n_gpu_layers", type=click.IntRange(min=0, max=INT32_MAX), default=0, show_default=True,
              help="Layers llama.cpp puts on the GPU while profiling (a GPU build only).")
@click.option("--coactivation", is_flag=True, help="Also count which experts are chosen together.")
@click.option("--logit-every", type=click.IntRange(min=0, max=INT32_MAX), default=1, show_default=True,
              help="Compute logits for every N-th prompt token. llama.cpp's last block routes only tokens whose "
                   "logits are computed, so 1 (as llama-imatrix) measures the last MoE layer on every token; 4 "
                   "measures it on a quarter of them for a quarter of the output-matrix cost; 0 only on the "
                   "tokens sampling needs.")
@click.option("--trace-tokens", type=click.IntRange(min=0), default=4096, show_default=True,
              help="Keep the order of routing (every layer's expert ids, token by token) for this many tokens: "
                   "solve --moe-cache-mib simulates an LRU expert cache on it; 0 keeps none.")
@friendly_errors
def run(model: Path, prompts_path: Path, generate: int, output: Path | None, n_ctx: int, n_batch: int,
        threads: int, n_gpu_layers: int, coactivation: bool, logit_every: int, trace_tokens: int) -> None:
    """Run prompts through llama.cpp and record the experts every MoE layer selects.

    Needs llama-cpp-python (pip install 'moeplace[profile]'). Ctrl-C stops early and keeps what was gathered.
    """
    from moeplace.sources.live import RunOptions, capture, load_llama, read_prompts

    desc = load_model(model)
    prompts = read_prompts(prompts_path)
    load_llama()
    options = RunOptions(generate=generate, n_ctx=n_ctx, n_batch=n_batch, n_threads=threads,
                         n_gpu_layers=n_gpu_layers, coactivation=coactivation, logit_every=logit_every,
                         trace_tokens=trace_tokens)
    state: dict[str, Any] = {"bar": None, "last": 0, "t0": time.perf_counter()}

    def progress(done: int, expected: int) -> None:
        if state["bar"] is None:
            state["bar"] = click.progressbar(length=expected, label="profiling", show_pos=True,
                                             item_show_func=lambda rate: rate)
            state["bar"].__enter__()
        rate = done / max(time.perf_counter() - state["t0"], 1e-9)
        state["bar"].update(done - state["last"], f"{rate:,.0f} tok/s")
        state["last"] = done

    try:
        result = capture(desc, prompts, options, progress=progress)
    finally:
        if state["bar"] is not None:
            state["bar"].__exit__(None, None, None)
    assert result.profile is not None
    click.echo(f"{result.prompt_tokens} prompt + {result.generated_tokens} generated tokens in "
               f"{result.seconds:.1f} s ({result.tokens_per_second:,.1f} tok/s)")
    if result.split_prompts:
        click.echo(f"{result.split_prompts} prompts were longer than the context ({n_ctx}) and ran in pieces")
    if result.interrupted:
        click.echo("interrupted: saving what was gathered")
    _save(result.profile, output, "live")
    click.echo(skew_report(result.profile).verdict())


@profile.command("import")
@click.argument("source", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="The model the imatrix or trace was computed on (any quantisation of it).")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False),
              help="Profile file to write [default: profiles/<model>-<imatrix|trace>.json].")
@friendly_errors
def import_(source: Path, model_path: Path, output: Path | None) -> None:
    """Build a profile from a llama-imatrix GGUF file or a routing trace CSV."""
    from moeplace.sources.imatrix import import_imatrix, looks_like_legacy_dat
    from moeplace.sources.trace import import_trace

    model = load_model(model_path)
    check_regular(source, "imatrix or trace")
    try:
        with source.open("rb") as fh:
            head = fh.read(4096)
    except OSError as e:
        raise MoeplaceError(f"{source}: cannot read ({e.strerror})") from None
    if head[:4] == b"GGUF" or source.suffix.lower() == ".dat" or looks_like_legacy_dat(head):
        p, kind = import_imatrix(source, model), "imatrix"
    else:
        p, kind = import_trace(source, model), "trace"
    click.echo(f"{kind}: {_source_line(p)}")
    _save(p, output, kind)
    click.echo(skew_report(p).verdict())


@profile.command()
@click.argument("profile_path", metavar="PROFILE", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--model", "model_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Also check that the profile belongs to this model.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@friendly_errors
def show(profile_path: Path, model_path: Path | None, as_json: bool) -> None:
    """Summarise skew per layer: top-10%/25% shares, entropy, dead experts, distinct experts per batch."""
    p = load_profile(profile_path)
    if model_path is not None:
        check_profile(p, load_model(model_path), origin=str(profile_path))
    r = skew_report(p, DEFAULT_BATCHES)
    if as_json:
        click.echo(json.dumps(show_json(p, r), indent=2, allow_nan=False))
    else:
        _echo_lines(render_show(p, r))


def _weights(ctx: click.Context, param: click.Parameter, value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(x) for x in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a comma-separated list of numbers, like 1,1") from None


@profile.command()
@click.argument("profiles", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--weights", callback=_weights,
              help="One weight per profile: its share of the workload, whatever its token count "
                   "[default: pool the samples].")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path, dir_okay=False))
@friendly_errors
def merge(profiles: tuple[Path, ...], weights: list[float] | None, output: Path) -> None:
    """Combine profiles of the same model (e.g. chat and code workloads) into one."""
    if len(profiles) < 2:
        raise MoeplaceError("merge needs at least two profiles")
    merged = merge_profiles([load_profile(p) for p in profiles], weights)
    _save(merged, output, "merge")
    click.echo(skew_report(merged).verdict())


@profile.command()
@click.argument("profile_path", metavar="PROFILE", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["hot-json"]), default="hot-json", show_default=True,
              help="hot-json: per layer, experts from hottest to coldest with their share, and the share of "
                   "routes a cache of C experts per layer serves (see profiles/README.md).")
@click.option("--cache", type=click.IntRange(min=1), help="Keep only the C hottest experts of each layer.")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), help="[default: stdout]")
@friendly_errors
def export(profile_path: Path, fmt: str, cache: int | None, output: Path | None) -> None:
    """Write the hottest experts per layer for engines that cache or pin individual experts."""
    data = hot_experts(load_profile(profile_path), cache)
    text = json.dumps(data, indent=1, allow_nan=False) + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        write_file(output, encode_text(text))
        served = f"; a cache of {cache} per layer serves {data['served']:.1%} of routes" if cache else ""
        click.echo(f"wrote {output}{served}")


@profile.command()
@click.argument("profile_path", metavar="PROFILE", type=click.Path(path_type=Path, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="heat.svg (always works) or heat.png (needs matplotlib).")
@friendly_errors
def plot(profile_path: Path, output: Path) -> None:
    """Draw the layer x expert heat map (red = hot, blue = cold, white = uniform)."""
    from moeplace.plot import plot_profile

    path = plot_profile(load_profile(profile_path), output)
    click.echo(f"wrote {path}")

