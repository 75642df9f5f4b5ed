"""The Ray edge: the only place in `tagi_ray/` that imports Ray.

- `cluster.py`: connect a job to a Ray cluster (or start a local one), storage paths, resources;
- `train.py`: run a library worker loop on Ray Train (`TorchTrainer`), handing it a
  `WorkerContext` whose report/checkpoint calls are Ray Train's.

The entry points `jobs/`, `tune/` and `serve/` (installed as `tagi_ray.jobs`, `tagi_ray.tune`,
`tagi_ray.serve`) build on these; the library itself never imports Ray.
"""
