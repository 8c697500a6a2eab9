"""Image files that carry their own geometry (``.mha``/``.mhd``, ``.nii``/``.nii.gz``, ``.nrrd``) -> :class:`Volume`.

Read through SimpleITK, whose physical frame is already DICOM's patient LPS millimetres (ITK converts NIfTI's RAS
on reading), so the affine is built directly from ITK's origin, spacing and direction:

* ITK's index ``(i, j, k)`` is ``(col, row, slice)`` and its array (``GetArrayFromImage``) is ``(k, j, i)`` =
  ``(slice, row, col)``, the project's voxel order (:mod:`radiospine.geometry`);
* affine column ``n`` = direction column ``n`` times spacing ``n``; column 3 = the origin (the centre of voxel
  ``(0, 0, 0)``, as DICOM's ImagePositionPatient is the centre of the first pixel);
* slices are ordered as the DICOM reader orders a series (:mod:`radiospine.io.stacks`): the slice index grows
  along the image plane normal (row direction x column direction). A file whose third axis runs the other way
  (SPIDER's sagittal volumes: columns posterior, rows inferior, slices towards the left, a normal towards the
  right) is read with its slice axis reversed and the affine's origin and step changed to match, so the
  :class:`Volume` of a file and that of the DICOM series written from it are the same (voxels and affine), and an
  instance number means the same slice in both.

Refused with a :class:`~radiospine.errors.DicomReadError` naming the file and the fix: a file that does not exist
(a :class:`~radiospine.errors.MissingInputError`) or cannot be read, an image that is not 3-D (2-D, 4-D, several
components per voxel), a zero, negative or non-finite spacing, a direction matrix that is not orthonormal.
Instance numbers are ``1 .. n_slices`` in slice order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from radiospine.errors import DicomReadError, MissingInputError
from radiospine.io.volume import Volume

#: File name endings read as images with their own geometry (lower case; ``.nii.gz`` is one ending).
IMAGE_FILE_SUFFIXES: tuple[str, ...] = (".mha", ".mhd", ".nii", ".nii.gz", ".nrrd", ".nhdr")

#: How far a direction matrix may be from orthonormal (largest entry of ``D^T D - I``).
ORTHONORMAL_TOLERANCE = 1e-4


def image_file_suffix(path: str | Path) -> str | None:
    """The image ending of ``path`` (``".nii.gz"``, ``".mha"`` ...), ``None`` when it is not an image file."""
    name = Path(path).name.lower()
    return next((suffix for suffix in sorted(IMAGE_FILE_SUFFIXES, key=len, reverse=True) if name.endswith(suffix)),
                None)


def image_file_stem(path: str | Path) -> str:
    """The file name without its image ending (``"12_t2.nii.gz"`` -> ``"12_t2"``)."""
    name = Path(path).name
    suffix = image_file_suffix(path)
    return name[: -len(suffix)] if suffix else Path(path).stem


def affine_from_itk(origin, spacing, direction) -> np.ndarray:
    """The ``(4, 4)`` ``(col, row, slice, 1)`` -> LPS affine of an ITK image's origin, spacing and direction.

    ``direction`` is ITK's row-major 3x3 matrix (9 values): its column ``n`` is the LPS direction of index axis
    ``n``. No checks (see :func:`read_image_file`).
    """
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = matrix * np.asarray(spacing, dtype=float)[None, :]
    affine[:3, 3] = np.asarray(origin, dtype=float)
    return affine


def along_plane_normal(voxels: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(voxels, affine)`` with the slice axis reversed when it runs against the image plane normal (else as given)."""
    affine = np.asarray(affine, dtype=float)
    if affine[:3, 2] @ np.cross(affine[:3, 0], affine[:3, 1]) >= 0:
        return voxels, affine
    flipped = affine.copy()
    flipped[:3, 3] = affine[:3, 3] + (voxels.shape[0] - 1) * affine[:3, 2]
    flipped[:3, 2] = -affine[:3, 2]
    return np.ascontiguousarray(voxels[::-1]), flipped


def check_geometry(path: str | Path, spacing, direction) -> None:
    """Raise :class:`DicomReadError` naming ``path`` for a spacing or direction a stack cannot have."""
    spacing = np.asarray(spacing, dtype=float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise DicomReadError(f"{path}: voxel spacing {spacing.tolist()} mm is not positive; the file's header is "
                             f"damaged (write the image again with its real spacing)")
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    deviation = float(np.abs(matrix.T @ matrix - np.eye(3)).max()) if np.all(np.isfinite(matrix)) else np.inf
    if deviation > ORTHONORMAL_TOLERANCE:
        raise DicomReadError(f"{path}: the direction matrix {np.round(matrix, 4).tolist()} is not orthonormal "
                             f"(sheared or scaled axes); resample the image onto an orthogonal grid first")


def read_image_itk(path: str | Path):
    """``SimpleITK.ReadImage`` with the project's errors (missing file, unreadable file)."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path} does not exist; expected an image file "
                                f"({', '.join(IMAGE_FILE_SUFFIXES)})")
    if image_file_suffix(path) is None:
        raise DicomReadError(f"{path}: not an image file with its own geometry; expected one of "
                             f"{', '.join(IMAGE_FILE_SUFFIXES)}")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise DicomReadError(f"{path}: cannot be read as an image ({first[:200]}); the file is damaged or not "
                             f"an image: export it again") from None


def read_image_file(path: str | Path, *, study_id: int = 0, series_id: int = 0, description: str = "",
                    dtype=np.float32) -> Volume:
    """One 3-D image file -> :class:`Volume` (voxels ``(slice, row, col)`` as ``dtype``, affine to LPS mm).

    Raises:
        MissingInputError: no such file.
        DicomReadError: unreadable file, not 3-D or not scalar, bad spacing or direction (see the module docstring).
    """
    import SimpleITK as sitk

    image = read_image_itk(path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise DicomReadError(f"{path}: {image.GetNumberOfComponentsPerPixel()} components per voxel (a colour or "
                             f"vector image); expected one grey value per voxel")
    if image.GetDimension() != 3:
        raise DicomReadError(f"{path}: a {image.GetDimension()}-D image of size {list(image.GetSize())}; expected "
                             f"one 3-D stack of slices (split a 4-D series into one file per volume)")
    check_geometry(path, image.GetSpacing(), image.GetDirection())
    voxels = sitk.GetArrayFromImage(image).astype(dtype, copy=False)
    voxels, affine = along_plane_normal(voxels, affine_from_itk(image.GetOrigin(), image.GetSpacing(),
                                                                image.GetDirection()))
    return Volume(voxels=voxels, affine=affine, instance_numbers=np.arange(1, voxels.shape[0] + 1, dtype=np.int64),
                  study_id=int(study_id), series_id=int(series_id), description=description,
                  source_paths=(str(path),))


def write_image_file(path: str | Path, voxels: np.ndarray, affine: np.ndarray, *, compress: bool = True) -> Path:
    """Write ``(slice, row, col)`` voxels with a ``(col, row, slice)`` -> LPS affine as an image file (e.g. a crop)."""
    import SimpleITK as sitk

    affine = np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(voxels))
    image.SetSpacing(spacing.tolist())
    image.SetDirection((affine[:3, :3] / spacing[None, :]).ravel().tolist())
    image.SetOrigin(affine[:3, 3].tolist())
    sitk.WriteImage(image, str(path), useCompression=compress)
    return Path(path)
