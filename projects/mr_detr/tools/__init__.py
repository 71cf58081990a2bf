"""Command-line tools of the Mr. DETR project (importable for the tests)."""
