"""Calibration: measured effective bandwidth (and optionally compute throughput) per device, in a small versioned
JSON file that ``moeplace bench`` writes and ``--calibration`` reads.

The speed model predicts decode time as bytes read per token over each device's effective bandwidth (peak x
efficiency, :class:`moeplace.hardware.Device`). The presets' efficiencies are literature defaults; a calibration
replaces them with what llama.cpp reached on this machine::

    {
      "schema": "moeplace.calibration/1",
      "devices": {
        "CPU": {
          "bandwidth": 41200000000.0,          effective bytes/s while decoding
          "flops": 310000000000.0,             optional: sustained FLOP/s in prompt processing
          "label": "system RAM",               the device as moeplace described it when measuring
          "measured": "2025-01-31T12:00:00+00:00",
          "where": "host name, CPU model",
          "how": "moeplace bench: ...",        the method, model and engine, in words
          "notes": ["..."]
        }
      }
    }

Devices are keyed by llama.cpp buffer name (``CPU``, ``CUDA0``...), like everywhere else in moeplace.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from moeplace.errors import MoeplaceError
from moeplace.hardware import GB, Device
from moeplace.infiles import parse_json, read_text
from moeplace.outfiles import encode_text, write_file
from moeplace.speed import GPU_COMPUTE_EFFICIENCY

SCHEMA = "moeplace.calibration/1"


# A calibration names a few devices; megabytes of it are not one.
MAX_CALIBRATION_BYTES = 1 << 20


class CalibrationError(MoeplaceError):
    """A calibration file moeplace cannot use."""


@dataclass(frozen=True)
class Measurement:
    """What was measured for one device, and where, when and how."""

    bandwidth: float  # effective bytes/s
    flops: float | None = None  # sustained FLOP/s (prompt processing), when measured
    label: str = ""
    measured: str = ""  # ISO 8601 time
    where: str = ""
    how: str = ""
    notes: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Calibration:
    """Measurements by device name."""

    devices: Mapping[str, Measurement]

    def merged(self, newer: Calibration) -> Calibration:
        """This calibration with ``newer``'s devices replacing or adding to its own."""
        return Calibration({**self.devices, **newer.devices})


def _positive(value: Any, what: str, origin: str) -> float:
    try:
        x = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an integer past float range
        x = math.inf
    if not math.isfinite(x) or x <= 0:
        raise CalibrationError(f"{origin}: {what} must be a positive number of the measured rate, got "
                               f"{str(value)[:40]}; re-run moeplace bench to write the file again")
    return x


def _text(value: Any, what: str, origin: str) -> str:
    if not isinstance(value, str):
        raise CalibrationError(f"{origin}: {what} must be text, got {type(value).__name__}; re-run moeplace bench")
    return value


def from_dict(doc: Any, origin: str = "calibration") -> Calibration:
    """A calibration from its JSON document, every field checked."""
    if not isinstance(doc, dict):
        raise CalibrationError(f"{origin}: not a moeplace calibration (expected a JSON object with schema {SCHEMA})")
    schema = doc.get("schema")
    if schema is None:
        raise CalibrationError(f"{origin}: not a moeplace calibration (it has no schema; expected {SCHEMA})")
    if schema != SCHEMA:
        hint = " (written by a newer moeplace: upgrade it)" if isinstance(schema, str) and schema.startswith(
            "moeplace.calibration/") else ""
        raise CalibrationError(f"{origin}: schema is {schema!r}, expected {SCHEMA!r}{hint}")
    devices = doc.get("devices")
    if not isinstance(devices, dict) or not devices:
        raise CalibrationError(f"{origin}: 'devices' must map device names (CPU, CUDA0...) to measurements")
    out = {}
    for name, entry in devices.items():
        where = f"{origin}: device {name}"
        if not isinstance(entry, dict):
            raise CalibrationError(f"{where}: must be an object with a 'bandwidth'")
        if "bandwidth" not in entry:
            raise CalibrationError(f"{where}: has no 'bandwidth' (effective bytes/s)")
        flops = entry.get("flops")
        notes = entry.get("notes", [])
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            raise CalibrationError(f"{where}: 'notes' must be a list of strings")
        out[name] = Measurement(
            bandwidth=_positive(entry["bandwidth"], f"device {name} bandwidth", origin),
            flops=None if flops is None else _positive(flops, f"device {name} flops", origin),
            label=_text(entry.get("label", ""), f"device {name} label", origin),
            measured=_text(entry.get("measured", ""), f"device {name} measured", origin),
            where=_text(entry.get("where", ""), f"device {name} where", origin),
            how=_text(entry.get("how", ""), f"device {name} how", origin),
            notes=tuple(notes),
        )
    return Calibration(out)


def to_dict(cal: Calibration) -> dict[str, Any]:
    """The JSON document of a calibration."""
    devices = {}
    for name, m in cal.devices.items():
        entry: dict[str, Any] = {"bandwidth": m.bandwidth}
        if m.flops is not None:
            entry["flops"] = m.flops
        entry |= {"label": m.label, "measured": m.measured, "where": m.where, "how": m.how}
        if m.notes:
            entry["notes"] = list(m.notes)
        devices[name] = entry
    return {"schema": SCHEMA, "devices": devices}


def loads(text: str, origin: str = "calibration") -> Calibration:
    """Parses a calibration document."""
    doc = parse_json(text, origin, CalibrationError, "re-run moeplace bench to write it again")
    return from_dict(doc, origin)


def load(path: str | os.PathLike[str]) -> Calibration:
    """Reads a calibration file."""
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise CalibrationError(f"{p}: no such calibration file (moeplace bench -o {p} writes one)")
    return loads(read_text(p, "calibration", CalibrationError, limit=MAX_CALIBRATION_BYTES), str(p))


def dumps(cal: Calibration) -> str:
    return json.dumps(to_dict(cal), indent=1, allow_nan=False) + "\n"


def save(cal: Calibration, path: str | os.PathLike[str]) -> Path:
    """Writes the file (whole: through a temporary file beside it, so a crash never leaves half of one)."""
    return write_file(path, encode_text(dumps(cal)))


def apply_one(device: Device, m: Measurement) -> Device:
    """The device with the measured effective bandwidth (and FLOP/s) in place of the preset's.

    The efficiency becomes measured / peak where that is a plausible fraction (:meth:`Device.with_efficiency`
    accepts up to 1.5, which covers caches); otherwise the peak given for the device was wrong (say, a
    ``--ram-bw`` that does not describe this machine) and the measured figure replaces the bandwidth itself with
    efficiency 1. GPU FLOP/s are stored as the speed model's peak (it applies its kernel efficiency to GPUs)."""
    ratio = m.bandwidth / device.bandwidth if device.bandwidth > 0 else math.inf
    plausible = 0 < ratio <= 1.5
    out = device.with_efficiency(ratio) if plausible else replace(device, bandwidth=m.bandwidth, efficiency=1.0)
    if m.flops is not None:
        out = replace(out, flops=m.flops if device.is_host else m.flops / GPU_COMPUTE_EFFICIENCY)
    note = f"calibrated: {m.bandwidth / GB:.1f} GB/s effective"
    if m.measured:
        note += f", measured {m.measured}"
    if m.label and m.label != device.label:
        note += f" on '{m.label}' (this run describes it as '{device.label}')"
    return replace(out, notes=(*(n for n in device.notes if "bandwidth not given" not in n), note))


def apply(devices: Mapping[str, Device], calibration: Calibration) -> dict[str, Device]:
    """The devices with every calibrated one replaced (:func:`apply_one`); devices the calibration does not name,
    and measurements of devices not in the set, are left as they are."""
    return {name: apply_one(d, calibration.devices[name]) if name in calibration.devices else d
            for name, d in devices.items()}


# --- from measurements to bandwidths ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodeSample:
    """One measured generation run: the bytes each device reads per token (the speed model's count for that
    placement), the model's fixed seconds per token (device switches), and the measured seconds per token."""

    bytes_by_device: Mapping[str, float]
    fixed_seconds: float
    seconds: float


def host_bandwidth(bytes_per_token: float, tokens_per_second: float) -> float:
    """Effective bandwidth of a device that did all the reading: bytes per token x tokens per second."""
    if bytes_per_token <= 0 or tokens_per_second <= 0:
        raise CalibrationError("a bandwidth needs positive bytes per token and tokens per second")
    return bytes_per_token * tokens_per_second


def gpu_bandwidths(samples: list[DecodeSample], devices: Mapping[str, Device]) -> dict[str, float]:
    """Effective bandwidth of each GPU from runs that split the reading between the host and GPUs.

    One run cannot separate several unknown bandwidths, so the GPUs share one unknown efficiency ``e`` against
    their peaks, and the host's effective bandwidth is taken as known (the device's, calibrated or not):
    ``seconds = fixed + host_bytes / host_bw + sum_g bytes_g / (peak_g e)``. Each run gives ``e``; the median
    over runs is used. Runs whose host share alone exceeds the measured time say nothing and are skipped."""
    estimates = []
    for s in samples:
        rest = s.seconds - s.fixed_seconds
        per_peak = 0.0
        for name, b in s.bytes_by_device.items():
            d = devices[name]
            if d.is_host:
                rest -= b / d.effective_bandwidth
            else:
                per_peak += b / d.bandwidth
        if rest > 0 and per_peak > 0:
            estimates.append(per_peak / rest)
    if not estimates:
        return {}
    e = statistics.median(estimates)
    used = {n for s in samples for n, b in s.bytes_by_device.items() if b > 0 and not devices[n].is_host}
    return {n: devices[n].bandwidth * e for n in sorted(used)}
