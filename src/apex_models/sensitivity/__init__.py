"""Sensitivity: what in a text is a secret or personal data, and may it leave the machine.

Torch-free on purpose: the hybrid runtime imports this package to decide, before
anything syncs, whether a memory is public, internal or secret and which character
spans to redact. Detectors (rules) and the ONNX token classifier both live here; the
training recipe that produces the model is in :mod:`apex_models.training.sensitivity`.
"""
