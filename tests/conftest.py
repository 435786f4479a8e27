import jax
import pytest


@pytest.fixture
def x64():
    """Run the body of a test with 64-bit JAX arrays."""
    with jax.enable_x64(True):
        yield
