"""Self-contained HTML interpretability reports: :class:`~radiospine.report.inputs.ReportInputs` (the data set,
CV metrics, predictions, exact TreeSHAP values, ROI thumbnails, model card, provenance) ->
:func:`~radiospine.report.render.render_report` -> a folder of pages that open with no network.

Modules: ``inputs`` (the contract), ``feature_names`` (what a feature column measures), ``summaries`` (the
numbers), ``plots`` (embedded PNG figures), ``render`` (jinja2 templates in ``templates/``). The headless-Chromium
check of rendered pages and the synthetic inputs it uses live with the tests (``tests/browser_check.py``,
``tests/report_synthetic.py``).
"""
