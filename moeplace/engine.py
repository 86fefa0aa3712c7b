"""The former name of :mod:`moeplace.oracle` (loading, memory, speed measurement and comparisons), kept so that
existing callers and scripts importing ``moeplace.engine`` keep working; new code imports moeplace.oracle."""

from moeplace.oracle import *  # noqa: F403
from moeplace.oracle import __all__  # noqa: F401
