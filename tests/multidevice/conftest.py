"""Setup for the multi-device checks, run by tests/test_multidevice.py in their own process with 8
emulated CPU devices. By hand:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 .venv/bin/python -m pytest tests/multidevice/check_*.py

(Nothing here may change jax's configuration: the main suite loads this file when it collects tests/.)
"""

import jax
import pytest


@pytest.fixture(scope="session", autouse=True)
def eight_devices():
    if jax.device_count() < 8:
        pytest.exit(
            f"the multi-device checks need 8 devices, found {jax.device_count()} "
            "(set XLA_FLAGS=--xla_force_host_platform_device_count=8)",
            returncode=3,
        )
