"""What ``solve --compare`` and ``--target-tps`` print: the model planned on hardware variants side by side, and
the least VRAM that reaches a speed."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Mapping
from typing import Any

import click

from moeplace.cli import table
from moeplace.cli.options import devices_from, hardware_options
from moeplace.hardware import Device
from moeplace.memory import RunConfig
from moeplace.model import ModelDescription
from moeplace.placement import HOST
from moeplace.planner import Workload
from moeplace.sizes import format_size
from moeplace.whatif import Outcome, compare, least_vram


@click.command()
@hardware_options
def _variant_options(**_: Any) -> None:
    """The hardware options a --compare variant may set."""


def parse_variant(text: str, base: Mapping[str, Any]) -> dict[str, Any]:
    """The hardware options of a --compare variant: the command line's, with those the variant gives replaced."""
    try:
        ctx = _variant_options.make_context("--compare", shlex.split(text))
    except click.ClickException as e:
        raise click.UsageError(f"--compare '{text}': {e.format_message()}") from None
    merged = dict(base)
    merged.update({k: v for k, v in ctx.params.items() if k in base and v not in (None, ())})
    # the options kept in the context rather than passed (--link, --ram-avail): the variant's, else the command's
    merged["links"] = ctx.meta.get("moeplace.link") or ()
    merged["available"] = ctx.meta.get("moeplace.ram_avail")
    return merged


def whatif_report(md: ModelDescription, devices: dict[str, Device], base: Mapping[str, Any],
                  variants: tuple[str, ...], target_tps: float | None,
                  config: Callable[[Mapping[str, Device]], RunConfig], workload: Workload, margin: int,
                  as_json: bool, projection: str | None) -> None:
    """--compare and --target-tps: the model planned on hardware variants, and the least VRAM for a speed."""
    sets = [("as given", devices)]
    for v in variants:
        o = parse_variant(v, base)
        sets.append((v, devices_from(o["gpus"], o["backend"], o["ram"], o["ram_bw"], o["calibration"],
                                     links=o["links"], available=o["available"])))
    outcomes = compare(md, sets, config, workload=workload, margin=margin)
    target = least_vram(md, devices, config, target_tps, workload=workload, margin=margin) \
        if target_tps is not None and not variants else None

    def hw(o: Outcome) -> str:
        gpus = [f"{format_size(d.memory)}@{d.bandwidth / 1e9:.0f}" for n, d in o.devices.items() if n != HOST]
        host = o.devices[HOST]
        return f"{'+'.join(gpus) or 'no GPU'}, RAM {format_size(host.memory)}@{host.bandwidth / 1e9:.0f}"

    base_tps = outcomes[0].decode_tps
    # Variants come in the order the user lists them, cheapest first by convention: the first that reaches the
    # target is the cheapest listed upgrade (moeplace knows no prices).
    reaching = next((o for o in outcomes[1:] if target_tps and o.decode_tps >= target_tps), None) \
        if variants else None
    if as_json:
        doc: dict[str, Any] = {"schema": "moeplace.whatif/1", "model": md.name, "variants": [
            {"variant": o.label, "hardware": hw(o), "fits": o.plan is not None and o.plan.chosen.fits,
             "decode_tokens_per_second": o.plan.chosen.decode_tps if o.plan else None,
             "prompt_tokens_per_second": o.plan.chosen.prefill_tps if o.plan else None,
             "reaches_target": None if target_tps is None else o.decode_tps >= target_tps,
             "problem": o.problem or None} for o in outcomes]}
        if target is not None:
            doc["target"] = {"decode_tokens_per_second": target.tps, "least_gpu_memory": target.memory,
                             "decode_at_that_memory": target.plan.chosen.decode_tps if target.plan else None,
                             "ceiling_decode_tokens_per_second": target.ceiling, "plans": target.steps}
        if target_tps is not None and variants:
            doc["first_variant_reaching_target"] = reaching.label if reaching else None
        if projection:
            doc["projection"] = projection
        click.echo(json.dumps(doc, indent=1))
        return
    click.echo(f"{md.name}: what-if, context {outcomes[0].plan.estimate.context.n_ctx if outcomes[0].plan else '-'}, "
               f"workload {workload.name}; GPU and RAM as size@GB/s")
    click.echo("")
    rows = []
    for o in outcomes:
        p = o.plan
        gain = f"{(o.decode_tps / base_tps - 1) * 100:+.0f}%" if base_tps and o is not outcomes[0] and p else ""
        rows.append([o.label, hw(o), "yes" if p and p.chosen.fits else "no",
                     f"{p.chosen.decode_tps:.2f}" if p else "-", f"{p.chosen.prefill_tps:.0f}" if p else "-", gain,
                     ("reaches" if o.decode_tps >= target_tps else "short") if target_tps else "",
                     o.problem[:60]])
    headers = ["variant", "hardware", "fits", "decode tok/s", "prompt tok/s", "decode vs given", "target", "note"]
    for line in table(headers, rows, {3, 4, 5}):
        click.echo(line)
    if target_tps is not None and variants:
        click.echo("")
        click.echo(f"First listed variant that reaches {target_tps:g} tok/s (list them cheapest first): "
                   f"{reaching.label if reaching else 'none'}")
    if target is not None:
        click.echo("")
        gpu = next(n for n in devices if n != HOST)
        if target.memory is None:
            click.echo(f"No size of {gpu} reaches {target.tps:g} tok/s: with the whole model on it the plan decodes "
                       f"{target.ceiling:.2f} tok/s (its bandwidth is the limit)")
        else:
            assert target.plan is not None
            click.echo(f"Least {gpu} memory for {target.tps:g} tok/s: {format_size(target.memory)} "
                       f"(decodes {target.plan.chosen.decode_tps:.2f}; {target.steps} exact plans, 256 MiB steps; "
                       f"the whole model on it: {target.ceiling:.2f} tok/s)")
    click.echo("\nspeeds are predictions of the bandwidth model (see README)")
