import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """The suite never reads or writes the user's escnet cache (text features, converted models)."""
    previous = os.environ.get("ESCNET_CACHE")
    os.environ["ESCNET_CACHE"] = str(tmp_path_factory.mktemp("escnet-cache"))
    yield
    if previous is None:
        os.environ.pop("ESCNET_CACHE", None)
    else:
        os.environ["ESCNET_CACHE"] = previous
