"""Sweeps: the searched space (grid or ranges, checked against the recipe), the optuna study in
<DIR>/study.db, the ranking of trials and the pictures; workflows/sweep.py runs the trials."""
