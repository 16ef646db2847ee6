"""lorafleet: shared layer (config, errors, model provisioning and loading, chat template, CLI).

Stages (``train/``, ``optimize/``, ``serve/``, ``bench/``) import this package and never each other.
"""

__version__ = "0.1.0"
