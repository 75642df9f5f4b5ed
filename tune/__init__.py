"""Ray Tune entry points, installed as `tagi_ray.tune`.

Sweeps over meta-training hyperparameters (`tagi tune`, tune/sweep.py):
- space.py: search spaces in YAML (tune/spaces/*.yaml) -> Ray Tune param spaces
- teachers.py: one teacher fleet per LoRA rank of the space
- trial.py: the Tune function trainable (a TorchTrainer per trial, TuneReportCallback)
- results.py, plot.py: sweep_results.csv / .md, best.yaml, sweep.png
- sweep.py: the job (validation split, fleets, Tuner / Tuner.restore, ASHA, outputs)

The paper's tables (`tagi experiment`, tune/experiment.py): TAGI and its retrained ablations per
prompt format as one Tune grid, with the baselines, evaluated with CIs.
"""
