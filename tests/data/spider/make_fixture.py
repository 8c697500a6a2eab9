"""How tests/data/spider/ was made from SPIDER (run once by hand; the tests never run it).

    python tests/data/spider/make_fixture.py SPIDER_FOLDER tests/data/spider

``SPIDER_FOLDER`` holds ``volumes/<patient>_t2_SPACE_{image,mask}.mha`` and ``radiological_gradings.csv``. Each
patient's image and mask are cropped to the lumbar spine (the rows and columns below, every slice kept) with
SimpleITK's slicing, which moves the origin to the crop's first voxel, so the crop keeps its place in the patient
frame; written compressed. The gradings keep the IVD labels of the discs inside the crop.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import SimpleITK as sitk

#: patient -> (first row, end row, first column, end column, IVD labels inside the crop)
CROPS = {
    7: (142, 570, 226, 446, (1, 2, 3, 4, 5)),  # mid T12 body .. sacrum: L1/L2 .. L5/S1
    107: (56, 490, 192, 420, (0, 1, 2, 3, 4, 5)),  # mid L1 body .. sacrum: L1/L2 .. S1/S2 (IVD label 0)
}


def main(source: Path, out: Path) -> None:
    gradings = pd.read_csv(source / "radiological_gradings.csv")
    kept = []
    for patient, (row0, row1, col0, col1, labels) in CROPS.items():
        for kind in ("image", "mask"):
            image = sitk.ReadImage(str(source / "volumes" / f"{patient}_t2_SPACE_{kind}.mha"))
            sitk.WriteImage(image[col0:col1, row0:row1, :], str(out / f"{patient}_t2_SPACE_{kind}.mha"),
                            useCompression=True)
        kept.append(gradings[(gradings["Patient"] == patient) & gradings["IVD label"].isin(labels)])
    pd.concat(kept).to_csv(out / "radiological_gradings.csv", index=False, lineterminator="\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
