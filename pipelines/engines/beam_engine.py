"""The Beam engine: the crawl, hash and safety stages as Apache Beam pipelines, one element
per shard; the other stages run locally (they are one global step each, or GPU work).

Locally the pipelines run on the FnApiRunner (the DirectRunner's default path tries to
download a binary); ``--runner`` and any other pipeline options are passed through, e.g.
``--runner=DataflowRunner --project=... --region=... --temp_location=gs://...
--setup_file=./setup.py`` (output directories must then be shared storage).
"""

from __future__ import annotations

import logging

from curation.local_runner import run_locally
from curation.tasks import ShardRunner, ShardTasks

log = logging.getLogger(__name__)

BEAM_STAGES = ("crawl", "hash", "safety")  # per image, after download: where Beam fits


class BeamEngine:
    name = "beam"

    def __init__(self, options: list[str]) -> None:
        from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

        self.options = PipelineOptions(options)
        self.runner_name = self.options.view_as(StandardOptions).runner

    def _runner(self):
        if self.runner_name:
            return self.runner_name
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return FnApiRunner()

    def runner(self, stage: str) -> ShardRunner:
        return self.run_tasks if stage in BEAM_STAGES else run_locally

    def run_tasks(self, work: ShardTasks, progress: bool = True) -> None:
        """One pipeline over the shard tasks, one element each (the runner parallelises)."""
        import apache_beam as beam

        if not work.tasks:
            return
        log.info("beam: %s, %d shard tasks", work.desc, len(work.tasks))
        with beam.Pipeline(runner=self._runner(), options=self.options) as p:
            _ = (
                p
                | f"{work.desc} shards" >> beam.Create(work.tasks)
                | "spread" >> beam.Reshuffle()
                | f"{work.desc} shard" >> beam.MapTuple(work.fn)
            )

    def close(self) -> None:
        pass
