"""DICOM input: the only package that imports pydicom. Series folders -> :class:`~radiospine.io.volume.Volume`.

* :mod:`radiospine.io.headers`: :func:`~radiospine.io.headers.read_series_headers`, a series folder's headers
  without pixel data, damaged files skipped and recorded; :class:`~radiospine.errors.DicomReadError`.
* :mod:`radiospine.io.stacks`: slice and stack records, slices split into stacks and ordered along the normal
  (pure geometry, no pydicom).
* :mod:`radiospine.io.decode`: :func:`~radiospine.io.decode.load_volume`, the pixels of a range of a stack's slices.
* :mod:`radiospine.io.volume`: the :class:`~radiospine.io.volume.Volume` and its voxel <-> patient LPS transforms.
* :mod:`radiospine.io.write`: writing MR files (the synthetic data set).

Nothing is imported here, so that ``radiospine.io.volume`` (imported by the ROI code) does not load pydicom.
"""
