"""Statistics with their uncertainty: metrics and bootstrap, calibration, thresholds, DeLong, units, multiple testing."""
