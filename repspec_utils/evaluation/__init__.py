"""Evaluation of trained models: robustness (attacks, cached), re-fitted readouts, white-box robust accuracy, geometry (pull-back metric) and certified bounds."""
