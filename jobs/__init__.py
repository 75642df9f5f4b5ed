"""Ray job entry points (thin wrappers around tagi_ray); filled by later issues."""
