"""Instruments and statistics, below the stages that use them: seed-level statistics (`stats`), the LLM
judge (`judge`), per-token teacher/base log-ratios (`divergence`) and the HTML kit every report
shares (`render`).
"""
