"""Which feature extractors help: the out-of-fold metric of the models trained on each extractor alone, without
each extractor, and on all of them.

:func:`extractor_ablation` trains the models of :func:`radiospine.models.condition_models.train_condition_models`
(same config, folds and seeds) on subsets of the extractors' columns and records, per subset, the out-of-fold
score of the final predictions (blended, calibrated, any-severe adjusted) and its four parts. An extractor
*helped* when the models on all extractors score lower (better) out of fold than the models without it; its
``gain`` is the score without it minus the score with all (positive: it helped). With two extractors, "without
radiomics" is "CNN alone". ``train-gbm`` records the result in the model card (``report.extractor_ablation``, when
``models.extractor_ablation`` is set), ``make bench`` prints it as a table (:func:`ablation_markdown`), and the
same two functions serve any other benchmark (a feature table and labels are all they need).

Record (JSON-ready)::

    {"extractors": ["cnn", "radiomics"],
     "runs": {"cnn": {"score": ..., "spinal": ..., "foraminal": ..., "subarticular": ..., "any_severe_spinal": ...,
                      "n_feature_columns": 9},
              "radiomics": {...}, "cnn+radiomics": {...}},
     "all": "cnn+radiomics",
     "gain": {"cnn": 0.015, "radiomics": 0.2},
     "helped": {"cnn": true, "radiomics": true}}

A table with one extractor has nothing to ablate: its record holds the one run and empty ``gain``/``helped``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd

from radiospine.config import ModelsConfig
from radiospine.features.columns import parse_column
from radiospine.models.condition_models import CNN_EXTRACTOR, PreparedFeatures, train_condition_models
from radiospine.models.fits import FitRunner

log = logging.getLogger(__name__)

#: Joins extractor names into the name of a run (``"cnn+radiomics"``).
RUN_JOIN = "+"


def run_name(extractors: tuple[str, ...] | list[str]) -> str:
    """``("radiomics", "cnn")`` -> ``"cnn+radiomics"`` (sorted)."""
    return RUN_JOIN.join(sorted(extractors))


def _scores(report: Mapping[str, Any], n_columns: int) -> dict[str, float | int]:
    final = report["cv_scores"]["final"]["all"]
    return {**{name: round(float(value), 6) for name, value in final.items()}, "n_feature_columns": n_columns}


def extractor_ablation(prepared: PreparedFeatures, labels_long: pd.DataFrame, config: ModelsConfig, *,
                       all_report: Mapping[str, Any] | None = None, runner: FitRunner | None = None
                       ) -> dict[str, Any]:
    """The ablation record of the extractors in ``prepared`` (see the module docstring).

    Args:
        prepared: the feature table as :func:`~radiospine.models.condition_models.prepare_features` or
            :func:`~radiospine.models.condition_models.prepare_stored_features` made it (its
            ``columns`` name the extractors used); it is not copied (each run selects its columns).
        labels_long: long labels (as for ``train_condition_models``).
        config: the ``models`` config every run trains with.
        all_report: the report (``TrainedModels.report``) of the models already trained on all of ``prepared``;
            None trains them here too.
        runner: where the fits run (:mod:`radiospine.models.fits`; None: this process).
    """
    extractor_of = {column: parse_column(column).extractor for column in prepared.columns}
    extractors = sorted(set(extractor_of.values()))
    subsets = [tuple(extractors)]
    if len(extractors) > 1:
        subsets += [(name,) for name in extractors]
        subsets += [tuple(e for e in extractors if e != left_out) for left_out in extractors]
    runs: dict[str, dict[str, float | int]] = {}
    for subset in subsets:
        name = run_name(subset)
        if name in runs:
            continue
        columns = [column for column in prepared.columns if extractor_of[column] in subset]
        if subset == tuple(extractors) and all_report is not None:
            runs[name] = _scores(all_report, len(columns))
            continue
        log.info("extractor ablation: training on %s (%d columns)", name, len(columns))
        failed = {e: n for e, n in prepared.failed_rows.items() if e in subset}
        # the CNN head joins the blend only in the runs that have the CNN
        run_config = config.model_copy(update={"cnn_head_blend": config.cnn_head_blend and CNN_EXTRACTOR in subset})
        trained = train_condition_models(dataclasses.replace(prepared, columns=columns, failed_rows=failed),
                                         labels_long, run_config, runner)
        runs[name] = _scores(trained.report, len(columns))
    all_name = run_name(extractors)
    gain, helped = {}, {}
    if len(extractors) > 1:
        for left_out in extractors:
            without = runs[run_name([e for e in extractors if e != left_out])]["score"]
            gain[left_out] = round(float(without) - float(runs[all_name]["score"]), 6)
            helped[left_out] = gain[left_out] > 0
    return {"extractors": extractors, "runs": runs, "all": all_name, "gain": gain, "helped": helped}


def ablation_markdown(record: Mapping[str, Any]) -> str:
    """A markdown table of an ablation record: one row per run (out-of-fold score and parts; lower is better),
    then a line per extractor saying whether it helped."""
    runs = record["runs"]
    parts = [name for name in next(iter(runs.values())) if name not in ("score", "n_feature_columns")]
    lines = ["| features | columns | score | " + " | ".join(parts) + " |", "|---" * (len(parts) + 3) + "|"]
    for name, scores in sorted(runs.items(), key=lambda item: (item[0] == record["all"], item[0])):
        label = name.replace(RUN_JOIN, " + ") + (" (all)" if name == record["all"] else " alone")
        if name == record["all"] and len(record["extractors"]) == 1:
            label = name
        lines.append(f"| {label} | {scores['n_feature_columns']} | {scores['score']:.4f} | "
                     + " | ".join(f"{scores[part]:.4f}" for part in parts) + " |")
    lines.append("")
    for name in record["extractors"]:
        if name in record["gain"]:
            verdict = "helped" if record["helped"][name] else "**did not help**"
            lines.append(f"- {name} {verdict}: without it the out-of-fold score is "
                         f"{record['gain'][name]:+.4f} {'higher' if record['gain'][name] >= 0 else 'lower'}.")
    return "\n".join(lines) + "\n"
