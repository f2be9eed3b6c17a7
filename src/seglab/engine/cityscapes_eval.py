"""Alias of ``seglab.metrics.cityscapes`` (its old place, named in the README), kept for one release."""
from seglab.metrics.cityscapes import evaluate_results, match_predictions  # noqa: F401
