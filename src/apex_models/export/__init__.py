"""apex_models.export (needs the `train` extra)."""
