"""Wiring and execution: one CLI per stage, build_lvd for the whole DAG, and the engines."""
