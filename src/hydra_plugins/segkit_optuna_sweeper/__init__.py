"""segkit's Optuna sweeper for Hydra (``hydra/sweeper=segkit_optuna``): see ``segkit.sweeps``."""
