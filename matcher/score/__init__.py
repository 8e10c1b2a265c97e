"""Score: neighbours to ranked titles (scoring), calibration on the index's own references, the
shipped background set."""
