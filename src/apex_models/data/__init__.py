"""apex_models.data (needs the `train` extra)."""
