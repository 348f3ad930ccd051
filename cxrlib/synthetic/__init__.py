"""The synthetic stand-ins in the real layouts: MIMIC-CXR-JPG 2.1.0 (tables, images, test-set labels) and MIMIC-IV."""
