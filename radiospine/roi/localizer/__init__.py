"""The level localiser: finds the 25 coordinates of a study that come without them (the test set).

Modules (nothing is re-exported here: import a name from the module that defines it)
-----------------------------------------------------------------------------------
* :mod:`~radiospine.roi.localizer.grids`: the networks' view: heatmap channels, canonical grids as affines,
  resampling onto them, heatmap targets, peak and level decoding (numpy only).
* :mod:`~radiospine.roi.localizer.data`: one study's series and label points; the training stacks.
* :mod:`~radiospine.roi.localizer.unet`: the heatmap U-Net.
* :mod:`~radiospine.roi.localizer.model`: the trained :class:`~radiospine.roi.localizer.model.Localizer`, its
  device, saving and loading.
* :mod:`~radiospine.roi.localizer.training`: augmentation, the loss, fitting the networks.
* :mod:`~radiospine.roi.localizer.inference`: the 25 points of unseen studies, with fallbacks and provenance.
* :mod:`~radiospine.roi.localizer.evaluation`: predicted against known coordinates.
* :mod:`~radiospine.roi.localizer.stage`: the ``train-localizer`` and ``localize`` stages.

Shape (the winning one of the competition, written small)
--------------------------------------------------------
1. **Sagittal**: every slice of a sagittal stack is resampled to a square grid of ``sagittal_grid_px`` pixels
   of ``sagittal_grid_mm`` in a canonical orientation (columns towards the patient's back, rows towards the
   feet, whatever the scanner's image orientation) and a U-Net predicts 10 heatmaps from the slice and its
   neighbours: the 5 canal levels and the 5 foraminal levels (one channel per level for both sides). Targets
   are 3D Gaussians around the label points in patient space, so a slice next to the marked one gets a weaker
   peak; the slice with the strongest peak is the slice of the point. The five levels are decoded together
   (:func:`~radiospine.roi.localizer.grids.decode_levels`): five different discs, in order from head to feet,
   about a disc height apart, which stops a level from landing on its neighbour's disc. Label points of all
   sagittal series are shared through the patient frame, so the canal is learnt on T1 slices too and the
   foramina on T2 slices: that is the fallback when a series is missing.
   * canal: the Sagittal T2/STIR stack (fallback: the Sagittal T1 stack);
   * foramina: the Sagittal T1 stack (fallback: Sagittal T2/STIR); the side comes from geometry, never from
     instance order: a slice lying towards +x (LPS) of the canal point is on the patient's left.
2. **Axial**: the (predicted) canal points are projected into every axial stack (:mod:`radiospine.roi.axial`),
   which picks the slice through each disc; the slice, its neighbours and the slices around them are resampled to
   a grid of ``axial_grid_px`` x ``axial_grid_mm`` centred where the canal line crosses the slice (columns towards
   the patient's left, rows towards the back) and a second U-Net predicts the left and right subarticular
   heatmaps; of the projected slice and its two neighbours, the one with the strongest peaks wins.
3. **Fallbacks** (every point's provenance is recorded in
   :data:`~radiospine.roi.localizer.inference.PROVENANCE_COLUMNS`): a level not found on the
   primary series is taken from the other sagittal series through the shared patient frame, then interpolated
   from the neighbouring levels along the spine, then from the strongest weak peak; a weak subarticular peak
   takes the mean offset from the canal seen in training; a level no axial slice lies within
   ``roi.axial_max_distance_mm`` of takes the nearest axial slice (noted). Only a study without any sagittal
   series (no canal, no foramina) or without an axial series (no subarticular points) leaves points
   ``missing``.

Training uses a quality focal loss (:func:`~radiospine.roi.localizer.training.heatmap_loss`), random rotation /
scale / shift / intensity augmentation (``localizer.augment``: optionally random transfer curves, bias fields and
blur, for real scanners) and, for axial slices, left-right mirroring with the side channels swapped. Training
data without axial series or without foraminal points (sagittal-only studies such as SPIDER's) trains only what
it has: the localiser records the rest as ``untrained`` and inference leaves those points ``missing``, saying why.

The two networks are saved as checkpoints of :mod:`radiospine.checkpoint` (weights + a JSON sidecar with the
architecture and the weights' hash, checked on loading) beside ``localizer.json`` (config, offsets, training
report); see :mod:`radiospine.roi.localizer.model`.
"""
