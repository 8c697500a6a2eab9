"""radiospine: grading degenerative lumbar spine conditions from MRI (RSNA 2024 layout)."""

__version__ = "0.1.0"
