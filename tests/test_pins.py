"""--pin parsing: REGEX=DEVICE, checked as llama.cpp would take the regex, catastrophic backtracking refused."""

from __future__ import annotations

import pytest

from moeplace.pins import PinError, backtracking_risk, parse_pin


def test_bad_pins() -> None:
    with pytest.raises(PinError, match="unknown device 'CUDA7'"):
        parse_pin("exps=CUDA7", ["CPU", "CUDA0"])
    with pytest.raises(PinError, match="REGEX=DEVICE"):
        parse_pin("no-equals-sign", ["CPU"])
    with pytest.raises(PinError, match="not a valid regular expression"):
        parse_pin("blk.(=CPU", ["CPU"])




@pytest.mark.parametrize("pattern", [r"(a+)+$", r"(.*x){9}", r"(a|ab)*c", r".*a.*b.*c.*d.*e"])
def test_catastrophic_patterns_are_refused(pattern: str) -> None:
    assert backtracking_risk(pattern)
    with pytest.raises(PinError):
        parse_pin(pattern + "=CPU", ["CPU"])


@pytest.mark.parametrize("pattern", [r"^blk\.([0-9]|1[0-5])\.ffn_(up|down|gate)_exps\.weight$", r"exps",
                                     r"blk\.4[0-7]\."])
def test_tensor_name_patterns_pass(pattern: str) -> None:
    assert backtracking_risk(pattern) == ""
    assert parse_pin(pattern + "=CPU", ["CPU"]).pattern == pattern
