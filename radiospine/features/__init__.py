"""Per-ROI features: one extractor interface (radiomics, CNN embeddings) and the feature store on disk.

:mod:`~radiospine.features.base` defines the interface and the table's column names,
:mod:`~radiospine.features.radiomics` and :mod:`~radiospine.features.cnn` the extractors,
:mod:`~radiospine.features.store` the Parquet shards and manifest, :mod:`~radiospine.features.driver` the run
(parallel, resumable), and :mod:`~radiospine.features.stage` wires catalog, ROI cutter and extractors for
``radiospine features``. Submodules are imported on use (torch and pyradiomics are heavy).
"""
