"""Regions of interest per study, condition and level: from label coordinates or from the localiser."""
