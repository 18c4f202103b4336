"""Looking at finished runs: replay quality, inspection, downstream adaptation, reports."""
