"""Setup for the multi-device checks (run by tests/test_multidevice.py in their own process, with 8
emulated CPU devices; `python -m pytest tests/multidevice/check_*.py` runs them by hand)."""

import jax
import pytest

jax.config.update("jax_num_cpu_devices", 8)  # before the backend starts; a no-op on GPU/TPU


@pytest.fixture(scope="session", autouse=True)
def eight_devices():
    if jax.device_count() < 8:
        pytest.exit(f"the multi-device checks need 8 devices, found {jax.device_count()}", returncode=3)
