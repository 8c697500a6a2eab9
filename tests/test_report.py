"""The HTML report: files and links, escaping of hostile strings, self-containment, exact TreeSHAP additivity,
the numbers shown, input validation, and a real headless-Chromium check of the pages."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from browser_check import Chromium, check_report, find_chromium
from matplotlib.image import imread
from report_synthetic import synthetic_report_inputs

from radiospine import metrics, vocab
from radiospine.models.ordinal import MulticlassGBMClassifier, OrdinalGBMClassifier
from radiospine.report import plots, summaries
from radiospine.report.feature_names import parse_feature_name
from radiospine.report.inputs import ConditionExplanation, ReportInputs, Thumbnail
from radiospine.report.render import PAGE_SECTIONS, render_report
from radiospine.roi.types import Roi, RoiCrop

HOSTILE = "<script>alert(1)</script>$x^2$"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;$x^2$"
N_STUDIES = 5


class _Tags(HTMLParser):
    """Every start tag with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {name: value or "" for name, value in attrs}))


def _tags(path: Path) -> list[tuple[str, dict[str, str]]]:
    parser = _Tags()
    parser.feed(path.read_text())
    return parser.tags


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A rendered 5-study report with hostile strings and 2 thumbnails per row; stale pages from an 'earlier
    run' are put there first."""
    inputs = synthetic_report_inputs(N_STUDIES, 40, thumbnail_views=2, hostile=HOSTILE)
    out = tmp_path_factory.mktemp("report")
    (out / "studies").mkdir()
    (out / "conditions").mkdir()
    (out / "studies" / "999.html").write_text("stale")
    (out / "studies" / "notes.txt").write_text("not ours")
    (out / "conditions" / "old_group.html").write_text("stale")
    index = render_report(inputs, out)
    return inputs, out, index


def test_the_report_writes_every_page_and_removes_stale_ones(report):
    inputs, out, index = report
    assert index == out / "index.html" and index.is_file()
    assert sorted(p.name for p in (out / "conditions").iterdir()) == sorted(f"{g}.html" for g in inputs.explanations)
    assert sorted(inputs.explanations) == sorted(vocab.BASE_CONDITIONS)
    study_pages = sorted(p.name for p in (out / "studies").glob("*.html"))
    assert study_pages == sorted([*(f"{s}.html" for s in inputs.study_ids), "index.html"])
    assert len(inputs.study_ids) == N_STUDIES
    assert (out / "studies" / "notes.txt").is_file()  # not a page of ours: left alone
    assert not list(out.rglob(".*.tmp"))  # atomic writes leave no temporary file


def test_every_study_and_condition_page_is_linked(report):
    inputs, out, index = report
    study_links = {a["href"] for tag, a in _tags(out / "studies" / "index.html") if tag == "a"}
    assert {f"{s}.html" for s in inputs.study_ids} <= study_links
    overview_links = {a["href"] for tag, a in _tags(index) if tag == "a"}
    assert {f"conditions/{g}.html" for g in inputs.explanations} | {"studies/index.html"} <= overview_links
    # every relative link of every page resolves to a written file (anchors to an element of the page)
    for page in out.rglob("*.html"):
        tags = _tags(page)
        ids = {a["id"] for _, a in tags if "id" in a}
        for tag, attributes in tags:
            if tag != "a":
                continue
            target, _, anchor = attributes["href"].partition("#")
            if target:
                assert (page.parent / target).resolve().is_file(), f"{page}: broken link {attributes['href']}"
            elif anchor:
                assert anchor in ids, f"{page}: no element #{anchor}"


def test_a_study_page_shows_its_25_rows_with_thumbnails_and_waterfalls(report):
    inputs, out, _ = report
    study_id = inputs.study_ids[0]
    html = (out / "studies" / f"{study_id}.html").read_text()
    tags = _tags(out / "studies" / f"{study_id}.html")
    cards = [a["id"] for tag, a in tags if tag == "div" and "rowcard" in a.get("class", "")]
    assert cards == [f"{c}-{lv}" for c in vocab.CONDITIONS for lv in vocab.LEVELS]
    thumbnails = [a["src"] for tag, a in tags if tag == "img"]
    assert len(thumbnails) == 25 * 2
    assert html.count('class="wf"') == 25
    assert "L4/L5 spinal canal stenosis: Moderate " in html
    assert "the largest push towards Severe: " in html or "no feature pushes towards Severe" in html


def test_hostile_strings_are_shown_as_text(report):
    inputs, out, index = report
    pages = {path: path.read_text() for path in out.rglob("*.html")}
    for path, html in pages.items():
        assert "<script" not in html.lower(), path
        assert all(tag != "script" for tag, _ in _tags(path)), path
    first_study = inputs.study_ids[0]
    for page in (index, out / "studies" / "index.html", out / "studies" / f"{first_study}.html",
                 *(out / "conditions" / f"{g}.html" for g in inputs.explanations)):
        assert ESCAPED in pages[page], f"{page} does not show the hostile string escaped"


def test_the_report_references_nothing_outside_itself(report):
    _, out, _ = report
    for page in out.rglob("*.html"):
        html = page.read_text()
        assert not re.search(r"\b(src|href)\s*=\s*[\"']?\s*(https?:)?//", html, re.IGNORECASE), page
        assert "@import" not in html and "url(" not in html, page
        for tag, attributes in _tags(page):
            assert tag not in ("link", "script", "iframe", "object", "embed"), (page, tag)
            if "src" in attributes:
                assert attributes["src"].startswith(("data:image/png;base64,", "data:image/jpeg;base64,")), page
            if "href" in attributes:
                assert ":" not in attributes["href"], (page, attributes["href"])


def test_figures_and_thumbnails_are_decodable_images(report):
    _, _, index = report
    sources = [a["src"] for tag, a in _tags(index) if tag == "img"]
    assert len(sources) == 2 * len(vocab.BASE_CONDITIONS)  # reliability diagrams and confusion matrices
    for uri in sources:
        image = imread(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])), format="png")
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 300


def test_thumbnails_draw_the_mask_outline_on_the_centre_slice():
    image = np.zeros((3, 20, 24), dtype=np.float32)
    image[1] = 0.5  # the centre slice is mid-grey, its neighbours black
    mask = np.zeros((3, 20, 24), dtype=np.uint8)
    mask[1, 5:15, 6:18] = 1
    roi = Roi(7, 8, 0, vocab.SPINAL, "l4_l5", "sagittal_t2", (0.0, 0.0, 0.0), (10.0, 12.0), (4, 5, 6))
    thumbnail = Thumbnail.from_crop(RoiCrop(roi, image, mask, pixel_mm=0.5, slice_mm=3.0))
    assert thumbnail.view == "sagittal_t2" and "slice 5" in thumbnail.caption and "series 8" in thumbnail.caption
    uri = plots.thumbnail_uri(thumbnail)
    pixels = imread(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])), format="jpeg").astype(float)
    assert pixels.shape == (20, 24, 3)
    red, green = pixels[..., 0], pixels[..., 1]
    assert red[5, 10] > 200 and green[5, 10] < 120  # the outline
    for row, col in ((10, 12), (1, 1)):  # inside (no fill) and outside the mask: the grey centre slice, not black
        assert abs(red[row, col] - 128) < 20 and abs(green[row, col] - 128) < 20


@pytest.mark.parametrize("backend", ["lightgbm", "xgboost"])
@pytest.mark.parametrize("cls", [OrdinalGBMClassifier, MulticlassGBMClassifier])
def test_tree_shap_values_add_up_to_the_raw_margin(backend, cls):
    rng = np.random.default_rng(1)
    X = pd.DataFrame(rng.normal(size=(300, 6)), columns=[f"radiomics__axial_t2__original_glcm_f{j}" for j in range(6)])
    X.iloc[::7, 2] = np.nan
    y = np.digitize(X.iloc[:, 0].fillna(0) + 0.5 * rng.normal(size=300), [-0.3, 0.8])
    model = cls(backend=backend, n_estimators=30, random_state=0, n_jobs=1).fit(X, y)
    margin = model.raw_margin(X)
    keys = pd.DataFrame({"study_id": np.repeat(np.arange(60), 5), "condition": vocab.SPINAL,
                         "level": np.tile(vocab.LEVELS, 60)})
    names = [(f"output {m}", "Severe") for m in range(margin.shape[1])]
    explanation = ConditionExplanation.from_contributions(
        "spinal_canal_stenosis", backend, list(X.columns), X.to_numpy(), keys, model.shap_values(X), names)
    assert len(explanation.outputs) == margin.shape[1] == (2 if cls is OrdinalGBMClassifier else 3)
    for m, output in enumerate(explanation.outputs):
        np.testing.assert_allclose(output.margin, margin[:, m], rtol=1e-5, atol=1e-5)
        assert np.abs(output.values).sum() > 0
    # the waterfall shown on a study page adds up to the same margin
    output = explanation.output()
    for row in (0, 17, 299):
        chart = summaries.waterfall(explanation, row, output, top=3)
        assert len(chart.steps) == 4 and chart.steps[-1].label == "3 other features"
        assert chart.base + sum(step.shap for step in chart.steps) == pytest.approx(chart.margin)
        assert chart.margin == pytest.approx(margin[row, -1], abs=1e-5)
        assert all(step.left >= 0.0 and step.left + step.width <= 100.0 + 1e-9 for step in chart.steps)


def _explanation(shap_rows, feature_names=("radiomics__sagittal_t2__original_glcm_Contrast",
                                           "cnn__axial_t2__prob_severe", "key__level")):
    shap = np.asarray(shap_rows, dtype=float)
    keys = pd.DataFrame({"study_id": np.arange(len(shap)) + 1, "condition": vocab.SPINAL, "level": "l4_l5"})
    values = np.arange(shap.size, dtype=float).reshape(shap.shape)
    contributions = np.concatenate([shap, np.full((len(shap), 1), -1.0)], axis=1)[:, :, np.newaxis]
    return ConditionExplanation.from_contributions(vocab.SPINAL, "test", list(feature_names), values, keys,
                                                   contributions, [("P(y > moderate)", "Severe")])


def test_the_plain_language_line_names_the_largest_push():
    explanation = _explanation([[0.41, -0.9, 0.1], [-0.2, -0.3, -0.05]])
    output = explanation.output()
    line = summaries.plain_language(vocab.SPINAL, "l4_l5", np.array([0.17, 0.62, 0.21]), (explanation, 0, output))
    assert line == ("L4/L5 spinal canal stenosis: Moderate 0.62, Severe 0.21; the largest push towards Severe: "
                    "radiomics, Sagittal T2/STIR: original glcm Contrast (+0.41)")
    line = summaries.plain_language(vocab.SPINAL, "l4_l5", np.array([0.9, 0.08, 0.02]), (explanation, 1, output))
    assert line.endswith("no feature pushes towards Severe, the largest push away: CNN probability of Severe, "
                         "Axial T2 crop (-0.30)")
    assert summaries.plain_language(vocab.SPINAL, "l1_l2", np.array([0.9, 0.08, 0.02]), None).endswith(
        "no SHAP values for this row")


def test_family_importance_sums_shap_within_a_family():
    explanation = _explanation([[1.0, -1.0, 0.5], [-2.0, 0.0, 0.0]],
                               feature_names=("radiomics__sagittal_t2__original_glcm_Contrast",
                                              "radiomics__sagittal_t2__wavelet-LH_glcm_Idm",
                                              "radiomics__axial_t2__original_firstorder_Mean"))
    output = explanation.output()
    by_family = summaries.family_importance(explanation, output, "family")
    assert by_family["radiomics/glcm"] == pytest.approx((0.0 + 2.0) / 2)  # +1 and -1 cancel in row 0
    assert by_family["radiomics/firstorder"] == pytest.approx(0.25)
    by_filter = summaries.family_importance(explanation, output, "filter")
    assert by_filter["original"] == pytest.approx((1.5 + 2.0) / 2)
    assert by_filter["wavelet-LH"] == pytest.approx(0.5)
    importance = summaries.global_importance(explanation)
    assert importance["feature"].tolist()[0] == "radiomics__sagittal_t2__original_glcm_Contrast"
    assert importance[output.name].tolist() == pytest.approx([1.5, 0.5, 0.25])


@pytest.mark.parametrize("name, extractor, view, family, image_filter, label", [
    ("radiomics__sagittal_t2__original_glcm_Contrast", "radiomics", "sagittal_t2", "radiomics/glcm", "original",
     "radiomics, Sagittal T2/STIR: original glcm Contrast"),
    ("radiomics__axial_t2__mean25d_log-sigma-1-0-mm-2D_firstorder_10Percentile", "radiomics", "axial_t2",
     "radiomics/firstorder", "log-sigma-1-0-mm-2D",
     "radiomics, Axial T2: log-sigma-1-0-mm-2D firstorder 10Percentile (2.5D mean)"),
    ("radiomics__sagittal_t1__wavelet-LH_glszm_SizeZoneNonUniformity", "radiomics", "sagittal_t1", "radiomics/glszm",
     "wavelet-LH", "radiomics, Sagittal T1: wavelet-LH glszm SizeZoneNonUniformity"),
    ("radiomics__sagittal_t1__original_shape2D_Elongation", "radiomics", "sagittal_t1", "radiomics/shape2D",
     "original", "radiomics, Sagittal T1: original shape2D Elongation"),
    ("radiomics__axial_t2__n_slices", "radiomics", "axial_t2", "radiomics/slices used", "none",
     "radiomics, Axial T2: slices in the 2.5D mean"),
    ("cnn__sagittal_t1__prob_severe", "cnn", "sagittal_t1", "cnn probability", "none",
     "CNN probability of Severe, Sagittal T1 crop"),
    ("cnn__axial_t2__prob_normal_mild", "cnn", "axial_t2", "cnn probability", "none",
     "CNN probability of Normal/Mild, Axial T2 crop"),
    ("cnn__sagittal_t2__prob_moderate", "cnn", "sagittal_t2", "cnn probability", "none",
     "CNN probability of Moderate, Sagittal T2/STIR crop"),
    ("cnn__axial_t2__other_name", "cnn", "axial_t2", "cnn", "none", "cnn, Axial T2: other_name"),
    ("key__level", "key", None, "level and side", "none", "level (0 = L1/L2 ... 4 = L5/S1)"),
    ("key__side_left", "key", None, "level and side", "none", "side (1 = left, 0 = right)"),
    ("radiomics__axial_t2__weird", "radiomics", "axial_t2", "radiomics/other", "none", "radiomics, Axial T2: weird"),
    ("plainname", "", None, "other", "none", "plainname"),
])
def test_feature_names_are_parsed_into_families(name, extractor, view, family, image_filter, label):
    parsed = parse_feature_name(name)
    assert (parsed.extractor, parsed.view, parsed.family, parsed.filter, parsed.label) == (
        extractor, view, family, image_filter, label)
    assert len(parsed.short) <= 48


def test_label_distribution_and_loss_per_condition_level():
    labels = pd.DataFrame({"study_id": [1, 2, 3, 1], "condition": [vocab.SPINAL] * 3 + ["left_subarticular_stenosis"],
                           "level": ["l4_l5", "l4_l5", "l4_l5", "l1_l2"],
                           "severity": pd.array([0, 2, pd.NA, 1], dtype="Int8")})
    distribution = summaries.label_distribution(labels).set_index(["condition", "level"])
    assert len(distribution) == 25
    assert distribution.loc[(vocab.SPINAL, "l4_l5")].tolist() == [1, 0, 1, 1]
    assert distribution.loc[("left_subarticular_stenosis", "l1_l2")].tolist() == [0, 1, 0, 0]
    assert distribution.loc[(vocab.SPINAL, "l1_l2")].tolist() == [0, 0, 0, 0]
    predictions = pd.DataFrame({"study_id": [1, 2, 3], "condition": vocab.SPINAL, "level": "l4_l5",
                                "normal_mild": [0.7, 0.2, 0.3], "moderate": [0.2, 0.3, 0.3],
                                "severe": [0.1, 0.5, 0.4]})
    scored, n_unscored = summaries.scored_rows(labels, predictions)
    assert len(scored) == 2 and n_unscored == 1  # the subarticular row has no prediction; study 3 no label
    table = summaries.loss_by_condition_level(scored).set_index(["condition", "level"])
    expected = (1 * -np.log(0.7) + 4 * -np.log(0.5)) / 5
    assert table.loc[(vocab.SPINAL, "l4_l5"), "weighted_log_loss"] == pytest.approx(expected)
    assert table.loc[(vocab.SPINAL, "l4_l5"), "n"] == 2
    assert np.isnan(table.loc[(vocab.SPINAL, "l1_l2"), "weighted_log_loss"])
    assert expected == pytest.approx(metrics.weighted_log_loss(np.array([0.7, 0.5]), np.array([1.0, 4.0])))


def _replace(inputs: ReportInputs, **changes) -> dict:
    fields = {name: getattr(inputs, name) for name in ReportInputs.__dataclass_fields__}
    return {**fields, **changes}


@pytest.fixture(scope="module")
def small_inputs():
    return synthetic_report_inputs(3, 12, n_estimators=5)


def test_report_inputs_reject_malformed_frames(small_inputs):
    predictions = small_inputs.predictions
    with pytest.raises(ValueError, match=r"ReportInputs.predictions.study_id holds values that are not integer ids"):
        ReportInputs(**_replace(small_inputs, predictions=predictions.assign(study_id="abc")))
    with pytest.raises(ValueError, match="NaN or infinite"):
        ReportInputs(**_replace(small_inputs, predictions=predictions.assign(severe=np.nan)))
    with pytest.raises(ValueError, match="unknown condition"):
        ReportInputs(**_replace(small_inputs, predictions=predictions.assign(condition="spinal")))
    with pytest.raises(ValueError, match="lacks column"):
        ReportInputs(**_replace(small_inputs, series=small_inputs.series.drop(columns="series_description")))
    with pytest.raises(ValueError, match="severity must be 0, 1, 2"):
        ReportInputs(**_replace(small_inputs, labels=small_inputs.labels.assign(severity=5)))
    with pytest.raises(ValueError, match="fold_scores"):
        ReportInputs(**_replace(small_inputs, cv_scores=small_inputs.cv_scores.drop(columns="score")))
    with pytest.raises(ValueError, match="repeats"):
        ReportInputs(**_replace(small_inputs, predictions=pd.concat([predictions, predictions.head(1)])))
    with pytest.raises(ValueError, match="labels repeats"):
        ReportInputs(**_replace(small_inputs, labels=pd.concat([small_inputs.labels, small_inputs.labels.tail(1)])))
    explanation = small_inputs.explanations[vocab.SPINAL]
    with pytest.raises(ValueError, match="key each explanation by its group"):
        ReportInputs(**_replace(small_inputs, explanations={"other": explanation}))


def test_condition_explanations_check_their_shapes():
    keys = pd.DataFrame({"study_id": [1, 2], "condition": vocab.SPINAL, "level": "l1_l2"})
    good = np.zeros((2, 3, 1))
    with pytest.raises(ValueError, match=r"contributions must be \(n_rows, 3, n_outputs\)"):
        ConditionExplanation.from_contributions("g", "m", ["a", "b"], np.zeros((2, 2)), keys, np.zeros((2, 2, 1)),
                                                [("o", "Severe")])
    with pytest.raises(ValueError, match="must match"):
        ConditionExplanation.from_contributions("../evil", "m", ["a", "b"], np.zeros((2, 2)), keys, good,
                                                [("o", "Severe")])
    with pytest.raises(ValueError, match="default_output 'x' is not one of"):
        ConditionExplanation.from_contributions("g", "m", ["a", "b"], np.zeros((2, 2)), keys, good,
                                                [("o", "Severe")], default_output="x")
    with pytest.raises(ValueError, match="row_keys has 1 rows, feature_values 2"):
        ConditionExplanation.from_contributions("g", "m", ["a", "b"], np.zeros((2, 2)), keys.head(1), good,
                                                [("o", "Severe")])
    with pytest.raises(ValueError, match="NaN or infinite SHAP"):
        ConditionExplanation.from_contributions("g", "m", ["a", "b"], np.zeros((2, 2)), keys, good * np.nan,
                                                [("o", "Severe")])


@pytest.mark.slow
def test_serial_and_parallel_rendering_write_the_same_study_pages(report, tmp_path):
    inputs, out, _ = report
    render_report(inputs, tmp_path, jobs=2)
    stamp = re.compile(r"written \S+")
    for study_id in inputs.study_ids:
        name = f"studies/{study_id}.html"
        assert stamp.sub("", (tmp_path / name).read_text()) == stamp.sub("", (out / name).read_text())


@pytest.mark.browser
@pytest.mark.skipif(find_chromium() is None,
                    reason="headless Chromium is not installed; `make report-check` installs Debian's chromium")
def test_the_report_opens_in_headless_chromium_without_errors(report, tmp_path):
    _, _, index = report
    pages = check_report(index, screenshot_dir=tmp_path, timeout=60)
    assert set(pages) == set(PAGE_SECTIONS)
    for kind, page in pages.items():
        assert page.problems == [], f"{kind} ({page.url}): {page.problems}"
        assert page.sections == PAGE_SECTIONS[kind]
        assert (tmp_path / f"{kind}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.browser
@pytest.mark.skipif(find_chromium() is None,
                    reason="headless Chromium is not installed; `make report-check` installs Debian's chromium")
def test_the_browser_check_catches_errors_scripts_and_external_requests(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><head><title>bad</title></head><body>"
                    "<section id='dataset'><h2>Data</h2></section><section id='cv' hidden><h2>CV</h2></section>"
                    "<img src='http://127.0.0.1:9/x.png'><img src='absent.png'>"
                    "<script>console.error('boom'); alert(1); missing();</script></body></html>")
    with Chromium(timeout=60) as browser:
        result = browser.open(page.as_uri(), ["dataset", "cv"])
    problems = "\n".join(result.problems)
    assert result.sections == ("dataset",) and result.missing_sections == ("cv",)
    assert "console.error: boom" in problems
    assert "dialog opened: alert" in problems
    assert "ReferenceError" in problems
    assert "request leaves the report folder: http://127.0.0.1:9/x.png" in problems
    assert "1 <script> element(s)" in problems
    assert result.external_requests == ("http://127.0.0.1:9/x.png",)
    assert result.broken_images == ("http://127.0.0.1:9/x.png", "absent.png")
    assert f"failed load: {(tmp_path / 'absent.png').as_uri()}" in problems
