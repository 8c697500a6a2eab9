"""Benchmarks of radiospine (`make bench`): the pipeline at real image sizes, and the feature stage against a
naive loop. Results go to ``reports/``."""
