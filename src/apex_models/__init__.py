"""apex-models: small developer-specific models and the memory runtimes that ship them.

Sub-packages by domain: data, models, training, evaluation, export (need the `train`
extra) and runtime (needs only the `runtime` extra and never imports torch).
"""

__version__ = "0.1.0"
