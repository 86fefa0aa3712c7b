"""Where routing profiles come from.

- :mod:`moeplace.sources.live`: run prompts through llama.cpp (llama-cpp-python, optional) and record the
  experts every MoE layer selects.
- :mod:`moeplace.sources.imatrix`: the per-expert counts in a ``llama-imatrix`` GGUF file.
- :mod:`moeplace.sources.trace`: a routing trace CSV (aggregated counts or one row per routing event).

Each returns a validated :class:`~moeplace.routing.RoutingProfile` for a given model description.
"""
