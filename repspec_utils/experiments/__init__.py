"""The experiments: the recipes of SPEC §6 as configs, and `run`, the one place that trains, attacks and submits jobs for a notebook."""
