"""DVC stage `ingest_sources`: Stack Exchange, CoNaLa, tldr and docs as scrubbed, deduplicated, decontaminated records."""

from apex_models.stage_cli import run_stage
from apex_models.data.stages import run_ingest_sources

if __name__ == "__main__":
    run_stage("ingest_sources", __doc__, run_ingest_sources)
