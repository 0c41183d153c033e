"""The local model engine: prompt formats, the model cache, and generation.

Import the modules you need (``types`` and ``base`` are light; ``local``, ``cache`` loading
pull in torch/transformers).
"""
