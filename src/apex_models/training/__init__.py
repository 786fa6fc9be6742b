"""apex_models.training (needs the `train` extra)."""
