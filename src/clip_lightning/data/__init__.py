"""Data side: records core, format adapters, transforms and the LightningDataModule."""
