"""Ray Serve deployments (adapter generation + instance inference), installed as `tagi_ray.serve`."""
