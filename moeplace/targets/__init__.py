"""Engines moeplace plans for. See :mod:`moeplace.targets.registry` for the list and :mod:`moeplace.targets.base`
for the interface every engine implements."""
