"""Benchmark of the feature stage's radiomics path against a naive loop, on synthetic studies at real image sizes.

    python -m benchmarks.bench_features [--data DIR] [--studies 4] [--jobs 2] [--out reports/bench_features.json]

Both sides describe the same ROIs (the ROI cutter's, at the label coordinates of the synthetic training split)
with the same pyradiomics parameter file (``features.radiomics.params``, all filters and texture classes):

* **radiospine**: :func:`radiospine.features.driver.compute_features` with ``--jobs`` worker processes: only the
  DICOM slices the ROIs need are decoded, each crop is described slice by slice in true 2D with shared filtered
  images, one compute thread per worker;
* **naive**: one process, a loop over the same ROIs that, for each ROI, reads every DICOM file of its series with
  pydicom, cuts the ROI from those pixels, and calls pyradiomics' ``RadiomicsFeatureExtractor.execute`` once per
  slice (pyradiomics' defaults otherwise, its logger quietened the same way). ``--naive-read per-study`` gives the
  naive loop the benefit of reading each series once per study instead.

Reported (JSON on stdout and in ``--out``): seconds per study and ROIs per second of each side, their CPU
seconds and peak resident memory (both summed over the process and its workers, sampled every 50 ms), the speed
ratio naive / radiospine (wall time) and the CPU ratio, the load average (the wall-time ratio means little on a
machine busy with other work; the CPU ratio does not depend on it), and the largest relative difference between
the two sides' centre-slice features (they must agree: same ROIs, same features).

The synthetic data are generated into ``--data`` when it holds none (at real image sizes: about 15 CPU-seconds
per study) and reused afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from joblib.externals.loky import get_reusable_executor

from benchmarks.monitor import TreeMonitor
from radiospine import vocab
from radiospine.config import SynthConfig, load_config
from radiospine.features.columns import feature_column
from radiospine.features.driver import compute_features
from radiospine.features.radiomics import RadiomicsExtractor, quiet_pyradiomics
from radiospine.features.stage import RoiCutter
from radiospine.features.store import FeatureStore
from radiospine.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]


def ensure_data(data_dir: Path, n_studies: int, jobs: int) -> list[int]:
    """Synthetic training studies at real image sizes in ``data_dir`` (generated when missing)."""
    from radiospine.catalog import scan
    from radiospine.synth.generate import generate_dataset

    if not (data_dir / "train.csv").is_file():
        print(f"generating {n_studies} synthetic studies at real image sizes in {data_dir} ...", file=sys.stderr)
        generate_dataset(data_dir, SynthConfig(train_studies=n_studies, test_studies=0, small=False), jobs=jobs)
    study_ids = scan(data_dir, "train").study_ids
    if len(study_ids) < n_studies:
        raise SystemExit(f"{data_dir} holds {len(study_ids)} training studies, fewer than --studies {n_studies}; "
                         f"point --data at an empty folder to generate them")
    return study_ids[:n_studies]


def read_series_pixels(series_stacks, pydicom) -> dict[Path, np.ndarray]:
    """Every DICOM file of a series read with pydicom: path -> ``(rows, cols)`` float32 after rescale."""
    pixels = {}
    for stack in series_stacks:
        for header in stack.slices:
            dataset = pydicom.dcmread(header.path)
            pixels[header.path] = (dataset.pixel_array.astype(np.float32) * float(header.rescale_slope)
                                   + float(header.rescale_intercept))
    return pixels


def naive_loop(cutter: RoiCutter, study_ids: list[int], params_path: Path, read: str) -> tuple[dict, int]:
    """The naive loop (module docstring): for each ROI, every DICOM of its series is read (``read="per-roi"``;
    ``"per-study"`` reads each series once per study), the ROI cut from those pixels, and pyradiomics' extractor
    called once per slice. Returns centre-slice features per (study, condition, level, view) and the ROI count."""
    import pydicom
    import SimpleITK as sitk
    from radiomics import featureextractor

    from radiospine.errors import RoiError
    from radiospine.roi.cut import cut_roi, normalise_intensity, place_rois, read_study_stacks

    with quiet_pyradiomics():
        extractor = featureextractor.RadiomicsFeatureExtractor(str(params_path))
    centre_features: dict[tuple, dict[str, float]] = {}
    n_rois = 0
    for study_id in study_ids:
        coords = cutter.coords[cutter.coords["study_id"] == study_id]
        stacks = read_study_stacks(cutter.data_dir, "train", study_id, sorted({int(s) for s in coords["series_id"]}))
        study_pixels = {series_id: read_series_pixels(series_stacks, pydicom)
                        for series_id, series_stacks in stacks.items()} if read == "per-study" else {}
        rois, _ = place_rois(study_id, coords, stacks, cutter.roi)
        for roi in rois:
            pixels = study_pixels.get(roi.series_id) or read_series_pixels(stacks[roi.series_id], pydicom)
            stack = stacks[roi.series_id][roi.stack_index]
            first, last = min(roi.slice_indices), max(roi.slice_indices)
            block = np.stack([pixels[header.path] for header in stack.slices[first:last + 1]])
            slices = normalise_intensity(block, cutter.roi.normalise_percentiles)[np.asarray(roi.slice_indices) - first]
            try:
                crop = cut_roi(roi, slices, stack.affine, cutter.roi)
            except RoiError:  # outside the image: radiospine has no crop for it either
                continue
            n_rois += 1
            for index in range(crop.image.shape[0]):
                image = sitk.GetImageFromArray(crop.image[index])
                image.SetSpacing((crop.pixel_mm, crop.pixel_mm))
                mask = sitk.GetImageFromArray(crop.mask[index])
                mask.CopyInformation(image)
                with quiet_pyradiomics():
                    values = extractor.execute(image, mask)
                if index == crop.image.shape[0] // 2:
                    centre_features[(study_id, roi.condition, roi.level, roi.view)] = {
                        name: float(value) for name, value in values.items() if not name.startswith("diagnostics")}
    return centre_features, n_rois


def side_summary(seconds: float, monitor: TreeMonitor, n_studies: int, n_rois: int) -> dict[str, float]:
    return {"seconds": round(seconds, 2), "seconds_per_study": round(seconds / n_studies, 2),
            "rois_per_second": round(n_rois / seconds, 2), "cpu_seconds": round(monitor.cpu_seconds, 1),
            "peak_rss_mb": round(monitor.peak_rss / 2**20, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "reports" / "bench_data" / "features",
                        help="synthetic data folder (generated when empty)")
    parser.add_argument("--studies", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "bench_features.json")
    parser.add_argument("--naive-read", choices=("per-roi", "per-study"), default="per-roi",
                        help="the naive loop reads a ROI's whole series for every ROI (default) or once per study")
    args = parser.parse_args(argv)

    config = load_config()
    study_ids = ensure_data(args.data, args.studies, args.jobs)
    get_reusable_executor().shutdown(wait=True)  # the generator's workers must not count in the measurements
    from radiospine.labels import load_label_coordinates

    coords = load_label_coordinates(args.data / "train_label_coordinates.csv").assign(source="label")
    cutter = RoiCutter(args.data, "train", coords, config.roi)
    params = config.features.radiomics.params_path()
    extractor = RadiomicsExtractor(params, slice_mean=config.features.radiomics.slice_mean)

    with tempfile.TemporaryDirectory() as work:
        store = FeatureStore(Workspace(work).features_dir("train"))
        with TreeMonitor() as ours_monitor:
            start = time.perf_counter()
            compute_features(study_ids, cutter, [extractor], store, config=config.features, jobs=args.jobs,
                             progress=False)
            ours_seconds = time.perf_counter() - start
        get_reusable_executor().shutdown(wait=True)  # idle workers must not count in the naive loop's RSS
        table = store.read().set_index(list(vocab.KEY_COLUMNS))

    with TreeMonitor() as naive_monitor:
        start = time.perf_counter()
        naive, n_rois = naive_loop(cutter, study_ids, params, args.naive_read)
        naive_seconds = time.perf_counter() - start

    largest = 0.0
    for (study_id, condition, level, view), features in naive.items():
        for name, value in features.items():
            ours = table.loc[(study_id, condition, level), feature_column("radiomics", view, name)]
            largest = max(largest, abs(ours - value) / max(abs(value), 1e-12))
    result = {
        "studies": len(study_ids),
        "rois": n_rois,
        "features_per_roi": len(extractor.feature_names()),
        "jobs": args.jobs,
        "naive_read": args.naive_read,
        "cpus": os.cpu_count(),
        "params": str(params.relative_to(REPO) if params.is_relative_to(REPO) else params),
        "radiospine": side_summary(ours_seconds, ours_monitor, len(study_ids), n_rois),
        "naive": side_summary(naive_seconds, naive_monitor, len(study_ids), n_rois),
        "speed_ratio": round(naive_seconds / ours_seconds, 2),
        "cpu_ratio": round(naive_monitor.cpu_seconds / ours_monitor.cpu_seconds, 2),
        "largest_relative_feature_difference": largest,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
