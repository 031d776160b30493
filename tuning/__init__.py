"""dmr-keras tuning: keras-tuner searches over depth, width and branch count (issue 5)."""
