"""vrclip.calibration: the on-site calibration wizard and its maths."""
