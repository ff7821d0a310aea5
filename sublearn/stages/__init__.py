"""The language-model pipeline: teacher -> generate -> filter -> (defend) -> (classify) -> train ->
theorem -> evaluate -> report.

Each stage is one module with one public `run(config, out, ...)`; stages talk only through files in
the run directory (JSONL records, the resolved config, a manifest written last). No stage imports
another: `roster` says who is in a run (teachers, students, evaluated models) and where each one's
files live, and every stage reads it. `pipeline.run` chains the stages, skipping finished ones.
"""
