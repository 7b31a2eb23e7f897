"""The transfer search's default compute budget, apart from sweeper.search.transfer (numpy, analysis) so
the sweep app's schema imports it cheaply."""

BUDGET = 0.4  # of the full grid's compute; the aim (its hard limit is 0.5)
