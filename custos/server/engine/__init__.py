"""The local model engine: prompt formats, the model cache, and generation.

Import the modules you need (``types`` and ``base`` are light; ``hf``, ``cache`` loading and ``testing``
pull in torch/transformers).
"""
