"""Training stack for FGResQ (installed as fgresq_sdk.train; never as a bare `train` package)."""
