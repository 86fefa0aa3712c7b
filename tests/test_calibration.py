"""moeplace.calibration: the file, applying it to devices, bandwidths from measurements, and --calibration."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from moeplace import calibration as C
from moeplace.cli.estimate_cmd import estimate as estimate_cmd
from moeplace.cli.solve_cmd import solve as solve_cmd
from moeplace.hardware import GB, device_set, host_device, parse_gpus
from moeplace.sizes import GIB
from moeplace.speed import GPU_COMPUTE_EFFICIENCY

CPU_ONLY = C.Calibration({"CPU": C.Measurement(bandwidth=20e9, label="system RAM", measured="2025-01-01T00:00:00+00:00",
                                               where="test host", how="by hand")})


def test_round_trip(tmp_path: Path) -> None:
    cal = C.Calibration({
        "CPU": C.Measurement(bandwidth=41.5e9, flops=3.1e11, label="system RAM", measured="2025-01-31T12:00:00+00:00",
                             where="box, EPYC", how="moeplace bench: x", notes=("small model",)),
        "CUDA0": C.Measurement(bandwidth=850e9, label="RTX 4090"),
    })
    path = C.save(cal, tmp_path / "sub" / "cal.json")
    assert C.load(path) == cal
    doc = json.loads(path.read_text())
    assert doc["schema"] == C.SCHEMA and "flops" not in doc["devices"]["CUDA0"]
    assert not list(path.parent.glob(".*.tmp"))


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "not valid JSON"),
    ("[]", "not a moeplace calibration"),
    ('{"schema": "moeplace.plan/1", "devices": {}}', "expected 'moeplace.calibration/1'"),
    ('{"schema": "moeplace.calibration/9", "devices": {"CPU": {"bandwidth": 1}}}', "upgrade"),
    ('{"schema": "moeplace.calibration/1", "devices": {}}', "'devices' must map"),
    ('{"schema": "moeplace.calibration/1", "devices": {"CPU": 5}}', "device CPU: must be an object"),
    ('{"schema": "moeplace.calibration/1", "devices": {"CPU": {"flops": 1e9}}}', "no 'bandwidth'"),
    ('{"schema": "moeplace.calibration/1", "devices": {"CPU": {"bandwidth": -3}}}', "positive"),
    ('{"schema": "moeplace.calibration/1", "devices": {"CPU": {"bandwidth": "fast"}}}', "positive"),
    ('{"schema": "moeplace.calibration/1", "devices": {"CPU": {"bandwidth": true}}}', "positive"),
    ('{"schema": "moeplace.calibration/1", "devices": {"CPU": {"bandwidth": 1e9, "flops": 0}}}', "flops"),
    ('{"schema": "moeplace.calibration/1", "devices": {"CPU": {"bandwidth": 1e9, "notes": "x"}}}', "notes"),
    ('{"schema": "moeplace.calibration/1", "devices": {"CPU": {"bandwidth": 1e9, "how": 3}}}', "how must be text"),
    ('{"schema": "moeplace.calibration/1", "devices": {"CPU": {"bandwidth": Infinity}}}', "Infinity"),
    ('{"schema": "moeplace.calibration/1", "devices": {"CPU": {"bandwidth": NaN}}}', "NaN"),
    ('{"schema": "moeplace.calibration/1", "devices": {"CPU": {"bandwidth": 1' + "0" * 400 + '}}}', "positive"),
    ('{"schema": "moeplace.calibration/1", "x": ' + "[" * 5000 + "]" * 5000 + "}", "nested too deeply"),
    ('{"schema": "moeplace.calibration/1", "pad": "' + "x" * (2 << 20) + '"}', "limit"),
])
def test_malformed_files_give_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "cal.json"
    path.write_text(text)
    with pytest.raises(C.CalibrationError, match=message) as e:
        C.load(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_missing_file() -> None:
    with pytest.raises(C.CalibrationError, match="no such calibration file"):
        C.load("/nonexistent/cal.json")


def test_apply_sets_the_measured_effective_bandwidth() -> None:
    gpus = parse_gpus(["rtx4090"])
    devices = device_set(gpus, host_device(64 * GIB, "ddr5-6000x2"))
    cal = C.Calibration({"CPU": C.Measurement(bandwidth=60e9, flops=5e11), "CUDA0": C.Measurement(bandwidth=900e9),
                         "CUDA7": C.Measurement(bandwidth=1e12)})
    out = C.apply(devices, cal)
    assert set(out) == set(devices)  # a measured device that is not in the set is ignored
    assert out["CPU"].effective_bandwidth == pytest.approx(60e9)
    assert out["CPU"].bandwidth == devices["CPU"].bandwidth  # the peak stays; the efficiency is measured
    assert out["CPU"].flops == 5e11
    assert out["CUDA0"].effective_bandwidth == pytest.approx(900e9)
    assert any("calibrated: 900.0 GB/s" in n for n in out["CUDA0"].notes)


def test_apply_replaces_an_implausible_peak() -> None:
    host = host_device(64 * GIB, 10)  # the user said 10 GB/s; the machine did 60
    gpu = parse_gpus(["24G"])[0]  # bandwidth not given: assumed, and noted
    out = C.apply({"CPU": host, "CUDA0": gpu}, C.Calibration({"CPU": C.Measurement(bandwidth=60e9),
                                                              "CUDA0": C.Measurement(bandwidth=400e9, flops=4e13)}))
    assert out["CPU"].bandwidth == 60e9 and out["CPU"].efficiency == 1.0
    assert out["CUDA0"].flops * GPU_COMPUTE_EFFICIENCY == pytest.approx(4e13)
    assert not any("bandwidth not given" in n for n in out["CUDA0"].notes)


def test_gpu_bandwidths_recover_the_true_ones() -> None:
    gpus = parse_gpus(["rtx4090", "rtx3090"])
    devices = device_set(gpus, host_device(64 * GIB, "ddr5-6000x2"))
    e = 0.71
    true = {"CUDA0": devices["CUDA0"].bandwidth * e, "CUDA1": devices["CUDA1"].bandwidth * e,
            "CPU": devices["CPU"].effective_bandwidth}
    samples = []
    for split in ((8e9, 4e9, 1e9), (10e9, 2e9, 3e9), (6e9, 6e9, 0.0)):
        read = dict(zip(("CUDA0", "CUDA1", "CPU"), split))
        seconds = 0.002 + sum(b / true[d] for d, b in read.items())
        samples.append(C.DecodeSample(read, 0.002, seconds))
    got = C.gpu_bandwidths(samples, devices)
    assert got == pytest.approx({"CUDA0": true["CUDA0"], "CUDA1": true["CUDA1"]})
    # A run whose host share alone exceeds the measured time tells nothing.
    assert C.gpu_bandwidths([C.DecodeSample({"CPU": 1e12, "CUDA0": 1e9}, 0.0, 0.01)], devices) == {}


def test_host_bandwidth() -> None:
    assert C.host_bandwidth(2 * GB, 10.0) == 20 * GB
    with pytest.raises(C.CalibrationError):
        C.host_bandwidth(0, 10.0)


def _decode_tps(cmd: object, args: list[str]) -> float:
    r = CliRunner().invoke(cmd, args)  # type: ignore[arg-type]
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    return doc["prediction"]["plan"]["decode_tokens_per_second"] if "prediction" in doc else (
        doc["decode"]["tokens_per_second_batch1"])


def test_solve_and_estimate_use_the_calibration(model_path: Callable[[str], Path], tmp_path: Path) -> None:
    path = C.save(CPU_ONLY, tmp_path / "cal.json")
    model = str(model_path("qwen3-30b-a3b"))
    base = ["--ram", "64G", "--ram-bw", "ddr5-6000x2", "--json"]
    for cmd, args in ((solve_cmd, [model, "--vram", "12G", "--no-scripts", *base]), (estimate_cmd, [model, *base])):
        plain = _decode_tps(cmd, args)
        calibrated = _decode_tps(cmd, [*args, "--calibration", str(path)])
        assert calibrated < plain  # 20 GB/s measured against ddr5-6000x2's 96 GB/s x 0.65


def test_a_bad_calibration_is_a_one_line_error(model_path: Callable[[str], Path], tmp_path: Path) -> None:
    bad = tmp_path / "cal.json"
    bad.write_text('{"schema": "moeplace.calibration/1", "devices": {"CPU": {"bandwidth": 0}}}')
    r = CliRunner().invoke(solve_cmd, [str(model_path("qwen3-30b-a3b")), "--vram", "12G", "--no-scripts",
                                       "--calibration", str(bad)])
    assert r.exit_code == 2
    assert r.stderr.count("\n") == 1 and "bandwidth must be a positive number" in r.stderr
