"""Commands above one run: `sublearn audit` (audit_data: rows and teacher; audit: the measures; audit_report:
the page), `sublearn compare` (one comparison across run directories), `sublearn sweep` (sweep_grid:
the grid; sweep: running it; sweep_report: the aggregated report) and the Inspect tasks and model
provider (`inspect_tasks`).
"""
