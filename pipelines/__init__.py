"""Thin runners, one per stage: config -> library call -> artifact. Run them through `radiospine <stage>`."""
