"""One intra-op thread for tests of tiny models: import ``one_thread`` into a test module or conftest.

Tiny models gain nothing from intra-op threads; on a busy 2-core machine waiting OpenMP threads made
their steps 10-50x slower. Importing the fixture registers it (autouse) for that module or folder.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
