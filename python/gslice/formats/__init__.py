"""Output formats: one module per format, each mapping the roles of a slice's tensors to its
own names, types and metadata (:mod:`.safetensors`: Hugging Face checkpoints, optionally
compressed-tensors; :mod:`.gguf`: llama.cpp). :mod:`.base` holds what they share."""
