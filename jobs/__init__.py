"""Ray job entry points, installed as `tagi_ray.jobs` (run as `python jobs/<name>.py` or `tagi <cmd>`)."""
