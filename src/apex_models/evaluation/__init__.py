"""apex_models.evaluation (needs the `train` extra)."""
