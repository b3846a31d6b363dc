"""``pckd teachers``: fetch published teachers into the cache (``pckd.models.published``), with resume,
verification and an accuracy check against the published numbers."""
