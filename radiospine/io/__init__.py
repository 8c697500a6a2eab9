"""DICOM input: the only package that imports pydicom. Series folders -> :class:`~radiospine.io.volume.Volume`."""
