import re
import sys
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
pytest_plugins = ["pytester"]  # tests/test_repo.py runs the data-skip hook below in a scratch project
warnings.filterwarnings("ignore", category=UserWarning)
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

#: a skip whose reason says test data is missing is a failure: the test images are committed under
#: tests/data (tests/_data.py), so every test runs on a bare clone. Skips stay for a missing GPU,
#: an opt-in checkout (SPT_KAIR_ROOT, SPT_RESTORMER_ROOT, SPT_FULL_DATA) or an optional package.
_DATA_SKIP = re.compile(r"shared[/\\]data|test images|\.\./shared|images not (found|present)", re.I)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and isinstance(report.longrepr, tuple) and _DATA_SKIP.search(str(report.longrepr[2])):
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} skipped for missing test data ({report.longrepr[2]}); read the committed "
            "images in tests/data (from _data import DATA) instead"
        )
