"""Ray Serve deployments (adapter generation + instance inference); filled by a later issue."""
