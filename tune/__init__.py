"""Ray Tune sweeps; filled by a later issue."""
