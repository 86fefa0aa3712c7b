"""Compatibility names: llama.cpp's placement semantics, pattern compaction and baselines now live in
:mod:`moeplace.targets` (``llamacpp_rules``, ``patterns``, ``llamacpp_baselines``, ``fit``). Existing code that
imports ``moeplace.llamacpp`` keeps working; new code imports from the target modules."""

from moeplace.sizes import GIB, MIB
from moeplace.targets.fit import FitResult, LayerFraction, fit_overflow_pattern, fit_placement
from moeplace.targets.llamacpp_baselines import cpu_moe_placement, n_cpu_moe_placement, smallest_n_cpu_moe
from moeplace.targets.llamacpp_rules import (
    BUFFER_FORMS,
    LLM_FFN_EXPS_REGEX,
    NotExpressible,
    Override,
    OverrideError,
    VerificationError,
    apply,
    check_device_order,
    check_portable_pattern,
    cpu_moe_pattern,
    cpu_moe_patterns,
    is_host,
    layer_arguments,
    layer_devices,
    parse_override_arg,
    rpc_endpoint,
    validate_buffer_name,
)
from moeplace.targets.patterns import (
    Expression,
    alternation,
    compact_patterns,
    decimal_range_pieces,
    decimal_range_regex,
    diff_placements,
    express,
    verify,
)

__all__ = [
    "BUFFER_FORMS",
    "GIB",
    "LLM_FFN_EXPS_REGEX",
    "MIB",
    "Expression",
    "FitResult",
    "LayerFraction",
    "NotExpressible",
    "Override",
    "OverrideError",
    "VerificationError",
    "alternation",
    "apply",
    "check_device_order",
    "check_portable_pattern",
    "compact_patterns",
    "cpu_moe_pattern",
    "cpu_moe_patterns",
    "cpu_moe_placement",
    "decimal_range_pieces",
    "decimal_range_regex",
    "diff_placements",
    "express",
    "fit_overflow_pattern",
    "fit_placement",
    "is_host",
    "layer_arguments",
    "layer_devices",
    "n_cpu_moe_placement",
    "parse_override_arg",
    "rpc_endpoint",
    "smallest_n_cpu_moe",
    "validate_buffer_name",
    "verify",
]
