"""Power-saving modes: cut-off plans, calibration to a target, early decision."""

from powersave.power.calibrate import DEFAULT_TARGETS, Calibration, Target, calibrate

__all__ = ["DEFAULT_TARGETS", "Calibration", "Target", "calibrate"]
