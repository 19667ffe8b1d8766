"""ml-collections config files (each defines ``get_config()``); loaded by path with ``--config=``."""
