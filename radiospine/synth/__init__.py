"""The synthetic RSNA-layout study generator (``radiospine synth``).

Studies that look to the pipeline like the real data (Kaggle layout, DICOM MR series sharing one patient frame,
coordinates marked by the real conventions) and whose best possible score is known: severities are anatomy
driven by latent values, labels come from those through a noisy reader, and the exact posterior (the oracle)
is written beside the data.

Modules: :mod:`~radiospine.synth.labels` (latent severities, reader, oracle), :mod:`~radiospine.synth.anatomy`
(the spine in patient millimetres), :mod:`~radiospine.synth.series` (series geometry and quirks),
:mod:`~radiospine.synth.render` (pixels), :mod:`~radiospine.synth.annotate` (coordinates),
:mod:`~radiospine.synth.generate` (the driver), :mod:`~radiospine.synth.preview` (a picture of a study).
"""
