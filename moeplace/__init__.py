"""moeplace: optimal GPU/RAM placement of Mixture-of-Experts tensors for llama.cpp."""

__version__ = "0.1.0"
