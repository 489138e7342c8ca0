"""The learned router's parts: prompt features, the model file, per-prompt outcome data and the
routing metrics (APGR, CPT, strong share at 95% quality)."""
