"""apex_models.models (needs the `train` extra)."""
