"""The language-model pipeline: teacher -> generate -> filter -> train -> evaluate -> report.

Each stage is one module with one public `run(config, out, ...)`; stages talk only through files in
the run directory (JSONL records, the resolved config, a manifest written last). `pipeline.run`
chains them, skipping finished stages.
"""
