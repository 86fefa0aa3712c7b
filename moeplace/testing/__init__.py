"""Test model factory: real GGUF files of Mixture-of-Experts (and dense) models for tests and benchmarks.

Two families:

* tiny models (``TINY``): kilobytes to a few hundred kilobytes of real, deterministic random weights that
  llama.cpp loads and evaluates. They carry a minimal SentencePiece ("llama") vocabulary with the 256 byte
  tokens, so any text tokenizes, and every hyper-parameter key ``src/models/<arch>.cpp`` reads.
* full-scale header-only models (``FULL``): the real tensor names, shapes and the quant mix of a popular
  GGUF of a real model, and the real vocabulary size; the data region is a sparse hole (the file has its full
  apparent size but uses almost no disk). llama.cpp can load them with ``no_alloc`` for memory checks.

Everything that gguf-py provides is taken from it: metadata keys go through ``GGUFWriter.add_*`` (which
formats ``gguf.Keys`` with the arch name), tensor names come from ``gguf.TENSOR_NAMES`` and are checked
against ``gguf.MODEL_TENSORS[arch]``, byte sizes from ``gguf.GGML_QUANT_SIZES`` and data from
``gguf.quants.quantize``. Shapes follow ``create_tensor`` calls in llama.cpp's ``src/models/<arch>.cpp``
and keys follow ``conversion/*.py`` (the converter) of the same llama.cpp revision that llama-cpp-python
0.3.36 vendors. Quant types follow ``llama_tensor_get_type`` of ``src/llama-quant.cpp`` for the spec's
``ftype``, so a "Q4_K_M" spec has the per-layer Q6_K ``ffn_down``/``attn_v`` mix a real Q4_K_M file has.

The package is split by job: :mod:`~moeplace.testing.specs` (the specifications and the models),
:mod:`~moeplace.testing.tensors` (each model's tensors, per llama.cpp's loader),
:mod:`~moeplace.testing.quant` (the port of llama-quantize's type rules) and :mod:`~moeplace.testing.writer`
(the GGUF files). Everything callers use is importable from ``moeplace.testing``.

``expected(spec)`` gives what an inspector must find, from the spec alone (no file is read). Roles:
``token_embd``, ``output``, ``output_norm``; ``attention`` (every ``attn_*`` weight and bias, ``attn_sinks``,
the linear-attention ``attn_qkv``/``attn_gate`` of recurrent layers); ``norm`` (every other ``*norm``
tensor, ``ssm_norm`` included); ``router`` (``ffn_gate_inp`` weight and bias, ``exp_probs_b``);
``routed_expert`` (``ffn_*_exps`` weights and biases); ``shared_expert`` (``ffn_*_shexp`` and
``ffn_gate_inp_shexp``); ``dense_ffn``; ``ssm`` (other ``ssm_*`` tensors); ``nextn`` (every tensor of a NextN
block, which llama.cpp does not load); ``other`` (e.g. ``rope_freqs``).
"""

from moeplace.testing.specs import FULL, ROLES, SPECS, TINY, Expected, ModelSpec, TensorSpec
from moeplace.testing.tensors import expected, tensor_plan
from moeplace.testing.writer import main, write_all, write_model

__all__ = [
    "FULL",
    "ROLES",
    "SPECS",
    "TINY",
    "Expected",
    "ModelSpec",
    "TensorSpec",
    "expected",
    "main",
    "tensor_plan",
    "write_all",
    "write_model",
]
