"""Sub-benchmarks of ``python -m clip_lightning.bench``; each module's ``run(...)`` returns figures.

Every comparison (Trainer vs plain loop, cached vs recomputed text features) is measured in one
process with alternating repetitions, so a noisy, shared machine slows both sides alike.
"""
